"""The default runner: jobs at once in worker processes, the sequential run's results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import (
    TINY_SIMULATE,
    assert_same_reconstructions,
    make_tiny_project,
    run_kedro,
)
from kedro.pipeline import Node, Pipeline
from kedro.runner import AbstractRunner

from fly64_recon import runner
from fly64_recon.pipelines.evaluation import pipeline as evaluation
from fly64_recon.pipelines.ptychi_baseline import pipeline as ptychi_baseline
from fly64_recon.runner import DASK_EXTRA, MissingExtraError, PoolRunner, pool
from fly64_recon.runner.groups import (
    NodeGroup,
    group_dependencies,
    node_groups,
    widest_level,
)
from fly64_recon.study import StudyDesign

DESIGN = StudyDesign(doses=(1000.0, 100000.0), views=("baseline", "sparse"))
TINY = {
    "simulate": {
        **TINY_SIMULATE,
        "object_shape": [64, 64],
        "scan": {"rows": 8, "points_per_row": 8, "n_positions": 64},
        "min_view_positions": 4,
    },
    "ptychi_baseline": {
        "device": "cpu",
        "lsqml": {"reconstructor_options": {"num_epochs": 3}},
    },
}


# How nodes become tasks, and how many run at once.


def study_pipeline() -> Pipeline:
    return ptychi_baseline.create_pipeline(design=DESIGN) + evaluation.create_pipeline(
        design=DESIGN
    )


def test_a_job_and_its_evaluation_are_one_task_and_the_jobs_run_side_by_side():
    pipeline = study_pipeline()
    groups = node_groups(pipeline)

    by_name = {group.name: group for group in groups}
    job = by_name["dose_1e3.sparse.test"]
    steps = ["validate", "reconstruct", "evaluate", "record", "report_metrics"]
    assert [node.name for node in job.nodes] == [
        f"dose_1e3.sparse.test.{step}" for step in steps
    ]  # in the pipeline's topological order
    assert len(groups) == len(DESIGN.jobs()) + 1  # and the study summary
    dependencies = group_dependencies(pipeline, groups)
    assert dependencies[job] == set()
    assert dependencies[by_name["study_summary"]] == set(groups) - {
        by_name["study_summary"]
    }
    assert widest_level(dependencies) == len(DESIGN.jobs())


def step(x: int) -> int:
    return x


def pair(x: int, y: int) -> int:
    return x + y


@pytest.mark.filterwarnings("ignore:Namespace 'n' is interrupted")
def test_a_namespace_that_would_wait_on_itself_runs_node_by_node():
    """a -> b and a -> x -> b with a and b in namespace n: n as one task would wait
    for x, which waits for n."""
    pipeline = Pipeline(
        [
            Node(step, "start", "n.a_out", name="a", namespace="n"),
            Node(step, "n.a_out", "x_out", name="x", namespace="m"),
            Node(pair, ["x_out", "n.a_out"], "n.b_out", name="b", namespace="n"),
            Node(step, "n.a_out", "n.c_out", name="c", namespace="n"),
        ]
    )

    groups = node_groups(pipeline)

    assert sorted(len(group.nodes) for group in groups) == [1, 1, 1, 1]
    assert widest_level(group_dependencies(pipeline, groups)) == 2


def test_a_worker_per_core_or_workers_per_gpu_on_each_gpu(monkeypatch):
    monkeypatch.setattr(pool, "visible_gpus", lambda: [])
    monkeypatch.setattr(pool, "available_cores", lambda: 4)
    assert [slot.name for slot in pool.worker_slots()] == [
        "cpu0",
        "cpu1",
        "cpu2",
        "cpu3",
    ]
    monkeypatch.setattr(pool, "visible_gpus", lambda: ["0", "3"])
    slots = pool.worker_slots(per_gpu=2)
    assert [slot.name for slot in slots] == ["gpu0-0", "gpu3-0", "gpu0-1", "gpu3-1"]
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["0", "3", "0", "3"]
    with pytest.raises(ValueError, match="workers_per_gpu must be a whole number"):
        PoolRunner(workers_per_gpu=0)


def test_each_worker_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(pool, "available_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [pool.thread_budget(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert pool.thread_budget(2) == 2


def test_workers_start_from_a_fresh_interpreter():
    assert pool.start_method() in ("forkserver", "spawn")


def test_the_runner_overrides_what_kedros_abstract_runner_leaves_abstract():
    assert AbstractRunner.__abstractmethods__ == {"_run", "_get_executor"}
    assert not PoolRunner.__abstractmethods__


# End to end: `kedro run` as a person types it, against the sequential reference.


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny study (4 jobs of 3 epochs), simulated by the default runner."""
    root = make_tiny_project(
        tmp_path_factory.mktemp("pool_project"),
        DESIGN.doses,
        TINY,
        design={"views": list(DESIGN.views), "splits": ["test"]},
    )
    kedro(root, "--pipeline", "simulate")
    return root


def kedro(project: Path, *args: str, check: bool = True):
    """``kedro run --env tiny ARGS``, plain output at 120 columns.

    One thread per worker whatever the machine's cores, so that the arrays can be
    compared bit for bit with the one-thread sequential reference.
    """
    done = run_kedro(
        project,
        *("run", "--env", "tiny", *args),
        env={"COLUMNS": "120", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def manifest(artifacts: Path) -> dict[str, dict]:
    jobs = json.loads((artifacts / "reconstruction_manifest.json").read_text())["jobs"]
    return {job["namespace"]: job for job in jobs}


@pytest.fixture(scope="module")
def sequential(project: Path) -> Path:
    """The reference arm of the benchmarks: today's behaviour before this runner."""
    artifacts = project / "sequential"
    kedro(
        project,
        *("--pipeline", "ptychi_baseline", "--runner", "SequentialRunner"),
        *("--params", f"ptychi_baseline.cpu_threads=1,artifact_root={artifacts}"),
    )
    return artifacts


@pytest.fixture(scope="module")
def pooled(project: Path):
    """The same jobs by a plain ``kedro run --pipeline ptychi_baseline``."""
    artifacts = project / "pooled"
    done = kedro(
        project,
        "--pipeline",
        "ptychi_baseline",
        "--params",
        f"artifact_root={artifacts}",
    )
    return artifacts, done.stdout + done.stderr


@pytest.mark.e2e
def test_the_default_run_matches_the_sequential_run_bit_for_bit(sequential, pooled):
    artifacts, _ = pooled
    statuses = {ns: job["status"] for ns, job in manifest(artifacts).items()}
    assert statuses == {ns: job["status"] for ns, job in manifest(sequential).items()}
    assert set(statuses.values()) == {"succeeded"}
    assert assert_same_reconstructions(sequential, artifacts) == len(statuses)


@pytest.mark.e2e
def test_jobs_ran_side_by_side_in_worker_processes(sequential, pooled):
    artifacts, _ = pooled
    workers = Counter(job["worker"] for job in manifest(artifacts).values())
    assert set(workers) == {f"cpu{i}" for i in range(min(2, os.cpu_count() or 1))}
    assert {job["worker"] for job in manifest(sequential).values()} == {"local"}


@pytest.mark.e2e
def test_the_console_shows_jobs_and_a_summary_and_the_log_has_the_rest(pooled):
    artifacts, output = pooled
    lines = output.splitlines()
    assert lines[0] == "Running 4 reconstruction job(s)"
    finished = [line for line in lines if line.startswith("[")]
    assert [line[:5] for line in finished] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert any(line.startswith("Run finished in ") for line in lines)
    assert "4 succeeded" in output
    assert "WARNING" not in output and "Running node" not in output
    (log,) = (artifacts / "logs").glob("run-*.log")
    assert f"log       pooled/logs/{log.name}" in lines
    text = log.read_text()
    assert "job 4 of 4" in text and "Running node: reconstruct" in text
    assert "fly64_recon.progress: dose_1e3.sparse.test: epoch 3 of 3" in text


@pytest.mark.e2e
def test_a_failed_job_fails_the_run_with_one_line_per_failure(project, tmp_path):
    phase_d = tmp_path / "phase_d"
    bad = phase_d / "dose_100000" / "sparse" / "sparse_test.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a zip file")
    artifacts = tmp_path / "out"

    done = kedro(
        project,
        *(
            "--pipeline",
            "ptychi_baseline",
            "--namespaces",
            "dose_1e3.sparse,dose_1e5.sparse",
        ),
        *("--params", f"artifact_root={artifacts},phase_d_root={phase_d}"),
        check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "Error: JobsFailedError: 1 of 2 reconstruction job(s) failed" in output
    assert "  - dose_1e5.sparse.test: " in output and "Traceback" not in output
    assert "Failed jobs:" in output
    statuses = {ns: job["status"] for ns, job in manifest(artifacts).items()}
    assert statuses["dose_1e5.sparse.test"] == "failed"
    assert statuses["dose_1e3.sparse.test"] == "skipped"


MISSING_DASK = """\
import sys
sys.modules["dask"] = None
sys.modules["distributed"] = None
sys.argv = ["kedro", *sys.argv[1:]]
from kedro.framework.cli import main
main()
"""


def test_without_dask_the_dask_runner_is_a_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "fly64_recon.runner.dask", raising=False)
    with pytest.raises(MissingExtraError, match=re.escape(DASK_EXTRA)):
        runner.DaskRunner  # noqa: B018 - the attribute is the import


@pytest.mark.e2e
def test_kedro_run_with_the_dask_runner_without_dask_says_how_to_get_it(
    project, tmp_path
):
    wrapper = tmp_path / "no_dask.py"
    wrapper.write_text(MISSING_DASK)

    result = subprocess.run(
        [sys.executable, str(wrapper), "run", "--env", "tiny"]
        + ["--runner", "fly64_recon.runner.DaskRunner"],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1
    assert output.splitlines() == [
        f"Error: The Dask runner needs Dask, which is not installed: {DASK_EXTRA}"
    ]


def test_the_biggest_jobs_start_first_and_among_equals_the_highest_dose():
    def group(name: str) -> NodeGroup:
        return NodeGroup((Node(lambda x: x, "x", "y", name="n", namespace=name),))

    jobs = [group(ns) for ns in ("dose_1e3.baseline.test", "dose_1e5.baseline.test")]
    jobs += [group("dose_1e5.sparse.test"), group("make_report")]
    patterns = dict(zip(jobs, (500, 500, 100, 0), strict=True))

    ordered = [g.name for g in pool.start_order(jobs, patterns)]

    assert ordered == [
        "dose_1e5.baseline.test",
        "dose_1e3.baseline.test",
        "dose_1e5.sparse.test",
        "make_report",
    ]
