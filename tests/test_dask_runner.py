"""The study on a Dask cluster: the sequential run's results; a lost worker survived."""

from __future__ import annotations

import inspect
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import dask
import pytest
from conftest import (
    TINY_SIMULATE,
    assert_same_reconstructions,
    make_tiny_project,
    run_kedro,
)
from distributed import Client
from kedro.config import OmegaConfigLoader
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.runner import AbstractRunner, SequentialRunner

from fly64_recon.runner import dask as dask_runner
from fly64_recon.runner.common import fast_malloc, memory_handoffs
from fly64_recon.runner.dask import START_TOPIC, DaskRunner, local_cluster
from fly64_recon.settings import CONFIG_LOADER_ARGS

ENV = "dask"
DOSES = (1000.0, 100000.0)
TINY = {
    "simulate": {
        **TINY_SIMULATE,
        "object_shape": [64, 64],
        "scan": {"rows": 8, "points_per_row": 8, "n_positions": 64},
        "min_view_positions": 4,
    },
    "ptychi_baseline": {"lsqml": {"reconstructor_options": {"num_epochs": 3}}},
}


# Fast checks of how the local cluster and the tasks are shaped.


def test_a_cpu_machine_gets_single_threaded_cpu_workers(monkeypatch):
    monkeypatch.setattr(dask_runner, "visible_gpus", lambda: [])
    specs = dask_runner.worker_specs()
    assert list(specs) == ["cpu0", "cpu1"]
    for spec in specs.values():
        assert spec["options"]["nthreads"] == 1
        assert spec["options"]["env"] == {} and spec["options"]["resources"] == {}
    assert list(dask_runner.worker_specs(3)) == ["cpu0", "cpu1", "cpu2"]


def test_a_gpu_machine_gets_one_worker_per_gpu(monkeypatch):
    monkeypatch.setattr(dask_runner, "visible_gpus", lambda: ["2", "5", "7"])
    specs = dask_runner.worker_specs()
    assert list(specs) == ["gpu2", "gpu5", "gpu7"]
    for gpu, spec in zip(("2", "5", "7"), specs.values(), strict=True):
        assert spec["options"]["env"] == {"CUDA_VISIBLE_DEVICES": gpu}
        assert spec["options"]["resources"] == {"GPU": 1}
        assert spec["options"]["nthreads"] == 1
    assert list(dask_runner.worker_specs(2)) == ["gpu2", "gpu5"]


def test_a_gpu_can_be_shared_by_several_workers(monkeypatch):
    monkeypatch.setattr(dask_runner, "visible_gpus", lambda: ["0", "1"])
    specs = dask_runner.worker_specs(per_gpu=3)
    assert list(specs) == ["gpu0-0", "gpu0-1", "gpu0-2", "gpu1-0", "gpu1-1", "gpu1-2"]
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == [
        "0",
        "0",
        "0",
        "1",
        "1",
        "1",
    ]
    limits = {s["options"]["memory_limit"] for s in specs.values()}
    assert limits == {dask_runner.MEMORY_LIMIT // 6}
    with pytest.raises(ValueError, match="workers_per_gpu must be at least 1"):
        dask_runner.DaskRunner(workers_per_gpu=0)


def test_workers_per_gpu_without_a_gpu_says_it_does_nothing(monkeypatch, caplog):
    monkeypatch.setattr(dask_runner, "visible_gpus", lambda: [])
    assert list(dask_runner.worker_specs(per_gpu=3)) == ["cpu0", "cpu1"]
    assert "No GPU is visible, so workers_per_gpu=3 does nothing" in caplog.text


def test_the_dask_environment_changes_where_data_goes_not_the_study():
    def configured(env: str) -> dict:
        conf = Path(__file__).resolve().parents[1] / "conf"
        loader = OmegaConfigLoader(str(conf), env=env, **CONFIG_LOADER_ARGS)
        return {"parameters": loader["parameters"], "globals": loader["globals"]}

    assert configured(ENV) == configured("base")


def test_the_runner_overrides_what_kedros_abstract_runner_leaves_abstract():
    """``_run`` and ``_get_executor``: the one non-public part of Kedro it relies on."""
    assert AbstractRunner.__abstractmethods__ == {"_run", "_get_executor"}
    parameters = list(inspect.signature(AbstractRunner._run).parameters)
    assert parameters == ["self", "pipeline", "catalog", "hook_manager", "run_id"]
    assert not DaskRunner.__abstractmethods__


def fake_client(*workers: dict) -> SimpleNamespace:
    info = {"workers": {f"tcp://w{i}": w for i, w in enumerate(workers)}}
    return SimpleNamespace(scheduler_info=lambda n_workers: info)


def test_tasks_take_a_gpu_slot_only_where_every_worker_has_one():
    gpu = {"name": "g", "nthreads": 4, "resources": {"GPU": 1}}
    cpu = {"name": "c", "nthreads": 1, "resources": {}}
    assert dask_runner.task_resources(fake_client(gpu, gpu)) == {"GPU": 1}
    assert dask_runner.task_resources(fake_client(cpu, cpu)) is None
    with pytest.raises(RuntimeError, match="--nthreads 1"):
        dask_runner.task_resources(fake_client(gpu, cpu | {"nthreads": 2}))


# End to end: a tiny study, simulated once, reconstructed by each runner.


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the project whose ``dask`` environment holds a tiny study, simulated."""
    root = make_tiny_project(
        tmp_path_factory.mktemp("dask_project"),
        DOSES,
        TINY,
        env=ENV,
        design={"views": ["baseline", "sparse"], "splits": ["test"]},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
        kedro_run(
            root, SequentialRunner(), root / "unused", pipeline_names=["simulate"]
        )
        yield root


def kedro_run(
    project: Path, runner: AbstractRunner, artifacts: Path, **run_args
) -> None:
    """One ``kedro run`` in the ``dask`` environment, writing under ``artifacts``."""
    bootstrap_project(project)
    params = {"artifact_root": str(artifacts)}
    with KedroSession.create(
        project_path=project, env=ENV, runtime_params=params
    ) as session:
        session.run(runner=runner, **run_args)


@pytest.fixture(scope="module")
def cluster(project: Path) -> Iterator[Client]:
    """Two single-threaded CPU worker processes, as the runner starts them itself."""
    with local_cluster(2) as local, Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def sequential(project: Path) -> Path:
    """The reference: the study's reconstructions by the SequentialRunner."""
    artifacts = project / "sequential"
    kedro_run(
        project, SequentialRunner(), artifacts, pipeline_names=["ptychi_baseline"]
    )
    return artifacts


def manifest(artifacts: Path) -> dict:
    return json.loads((artifacts / "reconstruction_manifest.json").read_text())


def statuses(artifacts: Path) -> dict[str, str]:
    return {job["namespace"]: job["status"] for job in manifest(artifacts)["jobs"]}


def starts_since(client: Client, since: float) -> list[dict]:
    """The node starts the workers reported after ``since`` (Unix time)."""
    return [msg for stamp, msg in client.get_events(START_TOPIC) if stamp >= since]


@pytest.fixture(scope="module")
def dask_run(project: Path, cluster: Client, tmp_path_factory) -> SimpleNamespace:
    """The same study by the DaskRunner: its artifacts and the node starts reported."""
    artifacts = tmp_path_factory.mktemp("dask_run")
    since = time.time()
    runner = DaskRunner(address=cluster.scheduler.address)
    kedro_run(project, runner, artifacts, pipeline_names=["ptychi_baseline"])
    return SimpleNamespace(artifacts=artifacts, started=starts_since(cluster, since))


@pytest.mark.e2e
def test_dask_run_matches_the_sequential_run(sequential, dask_run):
    assert statuses(dask_run.artifacts) == statuses(sequential)
    assert set(statuses(dask_run.artifacts).values()) == {"succeeded"}
    assert assert_same_reconstructions(sequential, dask_run.artifacts) == 4


@pytest.mark.e2e
def test_every_node_ran_once_and_both_workers_worked(dask_run):
    from kedro.framework.project import pipelines  # noqa: PLC0415 - after bootstrap

    nodes = Counter(node.name for node in pipelines["ptychi_baseline"].nodes)
    assert Counter(msg["node"] for msg in dask_run.started) == nodes
    assert {msg["name"] for msg in dask_run.started} == {"cpu0", "cpu1"}


@pytest.mark.e2e
def test_tasks_run_with_glibcs_dynamic_malloc_restored(cluster, dask_run):
    """Dask's Nanny sets MALLOC_TRIM_THRESHOLD_ for its workers, which turns glibc's
    dynamic mmap threshold off (3x slower LSQML epochs): the local cluster keeps it out
    of the workers' environment, and every task calls fast_malloc for workers that
    others started."""
    trim = cluster.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
    assert set(trim.values()) == {None}
    calls = cluster.run(lambda: fast_malloc.cache_info().currsize)
    assert set(calls.values()) == {1}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ


@pytest.mark.e2e
def test_the_manifest_says_which_worker_ran_each_job(sequential, dask_run):
    """The worker that reported starting the job's reconstruction, whichever it was:
    the scheduler may give every reconstruction to one worker."""
    reconstructed_on = {
        msg["node"].removesuffix(".reconstruct"): msg["name"]
        for msg in dask_run.started
        if msg["node"].endswith(".reconstruct")
    }
    jobs = manifest(dask_run.artifacts)["jobs"]
    assert {job["namespace"]: job.get("worker") for job in jobs} == reconstructed_on
    assert len(reconstructed_on) == 4
    assert set(reconstructed_on.values()) <= {"cpu0", "cpu1"}
    assert {job.get("worker") for job in manifest(sequential)["jobs"]} == {"local"}


@pytest.mark.e2e
def test_in_the_dask_environment_no_data_passes_through_the_driver(project):
    from kedro.framework.project import pipelines  # noqa: PLC0415 - after bootstrap

    def handoffs(env: str) -> list[str]:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env=env) as session:
            catalog = session.load_context().catalog
        return memory_handoffs(pipelines["__default__"], catalog)

    assert handoffs(ENV) == []
    assert "dose_1e3.baseline.test.checked_input" in handoffs("local")


@pytest.mark.e2e
def test_the_scheduler_address_can_come_from_dask_config(cluster):
    with dask.config.set({"scheduler-address": cluster.scheduler.address}):
        with DaskRunner()._client() as client:
            assert client.scheduler.address == cluster.scheduler.address


@pytest.mark.e2e
def test_kedro_run_on_the_cluster_fails_when_a_job_fails(project, cluster, tmp_path):
    """The documented command; the hooks' verdict still makes the run exit 1."""
    bad = tmp_path / "phase_d" / "dose_100000" / "sparse" / "sparse_test.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a zip file")
    artifacts = tmp_path / "out"
    done = run_kedro(
        project,
        *("run", "--env", ENV),
        *("--runner", "fly64_recon.runner.DaskRunner"),
        *("--runner-params", f"address={cluster.scheduler.address}"),
        *("--pipelines", "ptychi_baseline"),
        *("--namespaces", "dose_1e3.sparse,dose_1e5.sparse"),
        *("--params", f"artifact_root={artifacts},phase_d_root={tmp_path / 'phase_d'}"),
        env={"COLUMNS": "200"},
        timeout=300,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert "JobsFailedError" in output and "dose_1e5.sparse.test" in output
    jobs = statuses(artifacts)
    assert jobs["dose_1e5.sparse.test"] == "failed"
    assert jobs["dose_1e3.sparse.test"] == "skipped"
    assert Counter(jobs.values())["not_run"] == 2


@pytest.mark.e2e
def test_a_worker_killed_mid_job_is_replaced_and_the_job_rerun(
    project, sequential, cluster, tmp_path
):
    marker = tmp_path / "crashed"

    def crash_the_first_reconstruction() -> None:
        """In each worker: the first reconstruction to finish an epoch kills it."""
        from fly64_recon.pipelines.ptychi_baseline import task  # noqa: PLC0415

        original = task.run_engine

        def crash_once(inputs, options, device, on_epoch, cpu_threads):
            def epoch_done(loss, current_object):
                with suppress(FileExistsError):
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                return on_epoch(loss, current_object)

            return original(inputs, options, device, epoch_done, cpu_threads)

        task.run_engine = crash_once

    cluster.run(crash_the_first_reconstruction)
    since = time.time()
    runner = DaskRunner(address=cluster.scheduler.address)
    kedro_run(
        project,
        runner,
        tmp_path / "out",
        pipeline_names=["ptychi_baseline"],
        namespaces=["dose_1e3"],
    )

    assert marker.exists()
    jobs = statuses(tmp_path / "out")
    assert [jobs[ns] for ns in jobs if ns.startswith("dose_1e3")] == ["succeeded"] * 2
    reference = sequential / "dose_1000"
    assert assert_same_reconstructions(reference, tmp_path / "out" / "dose_1000") == 2
    started = starts_since(cluster, since)
    again = [n for n, k in Counter(m["node"] for m in started).items() if k > 1]
    rerun = [name for name in again if name.endswith(".reconstruct")]
    assert len(rerun) == 1
    # Dask also reruns what the dead worker held besides (a validate, which writes
    # nothing), depending on where the scheduler had put it.
    assert set(again) - set(rerun) <= {n for n in again if n.endswith(".validate")}
    workers = [m["worker"] for m in started if m["node"] == rerun[0]]
    assert workers[0] != workers[1]
