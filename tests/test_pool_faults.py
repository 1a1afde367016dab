"""Faults that stay with their job under the default runner: a worker killed mid-job,
a CUDA error that poisons a worker's GPU, a worker that dies every time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_tiny_project, run_kedro
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from test_pool_runner import DESIGN, TINY

from fly64_recon.runner import PoolRunner, pool
from fly64_recon.runner.pool import WorkerLostError, describe_exit

# Loaded by every process of a `kedro run` whose PYTHONPATH starts with its folder
# (the fork server and its workers too): the named jobs meet their fault once.
INJECT_FAULTS = textwrap.dedent(
    """\
    import os
    import signal
    from pathlib import Path

    from fly64_recon.pipelines.ptychi_baseline import task

    real = task.run_engine
    marks = Path(os.environ["FLY64_FAULT_MARKS"])


    def first_time(namespace):
        try:
            os.close(os.open(marks / namespace, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


    def run_engine(inputs, options, device, on_epoch=None, cpu_threads=None):
        namespace = getattr(on_epoch, "namespace", None)
        if namespace == os.environ["FLY64_KILL_JOB"] and first_time(namespace):
            os.kill(os.getpid(), signal.SIGKILL)
        if namespace == os.environ["FLY64_CUDA_ERROR_JOB"] and first_time(namespace):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(inputs, options, device, on_epoch, cpu_threads)


    task.run_engine = run_engine
    """
)
KILLED = "dose_1e3.sparse.test"
POISONED = "dose_1e5.baseline.test"


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory):
    """The tiny study's 4 jobs by `kedro run`, one worker killed during a job, one
    job meeting a CUDA error."""
    root = tmp_path_factory.mktemp("faulty")
    (root / "project").mkdir()
    project = make_tiny_project(
        root / "project",
        DESIGN.doses,
        TINY,
        design={"views": list(DESIGN.views), "splits": ["test"]},
    )
    inject = root / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT_FAULTS)
    marks = root / "marks"
    marks.mkdir()
    run_kedro(project, "run", "--env", "tiny", "--pipeline", "simulate", timeout=300)
    env = {
        "PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")]),
        "FLY64_FAULT_MARKS": str(marks),
        "FLY64_KILL_JOB": KILLED,
        "FLY64_CUDA_ERROR_JOB": POISONED,
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "120",
        # The sitecustomize above loads Kedro's logging into every interpreter, the
        # multiprocessing resource tracker's too, which then logs its shutdown warning
        # about the semaphore the killed worker held to a console already closed.
        "PYTHONWARNINGS": "ignore:resource_tracker:UserWarning",
    }
    artifacts = root / "out"
    done = run_kedro(
        project,
        *("run", "--env", "tiny", "--pipeline", "ptychi_baseline"),
        *("--runner-params", "max_workers=2", "--params", f"artifact_root={artifacts}"),
        env=env,
        timeout=300,
    )
    assert sorted(p.name for p in marks.iterdir()) == sorted([KILLED, POISONED])
    manifest = json.loads((artifacts / "reconstruction_manifest.json").read_text())
    return done, {job["namespace"]: job for job in manifest["jobs"]}, artifacts


@pytest.mark.e2e
def test_a_killed_worker_fails_its_job_with_how_and_the_others_run(faulty_run):
    done, jobs, _ = faulty_run

    assert done.returncode == 1
    assert {ns: job["status"] for ns, job in jobs.items()} == {
        "dose_1e3.baseline.test": "succeeded",
        KILLED: "failed",
        POISONED: "failed",
        "dose_1e5.sparse.test": "succeeded",
    }
    reason = jobs[KILLED]["reason"]
    assert "the worker process running it" in reason
    assert "was killed (SIGKILL" in reason and f"during {KILLED}.reconstruct" in reason
    output = done.stdout + done.stderr
    assert f"  - {KILLED}: the worker process running it" in output
    assert "Traceback" not in output and "BrokenProcessPool" not in output


@pytest.mark.e2e
def test_a_cuda_error_fails_its_job_and_its_worker_is_replaced(faulty_run):
    done, jobs, artifacts = faulty_run

    reason = jobs[POISONED]["reason"]
    assert reason.startswith("RuntimeError: CUDA error: an illegal memory access")
    assert "the runner replaces its worker" in reason
    (log,) = (artifacts / "logs").glob("run-*.log")
    assert "can no longer use its GPU" in log.read_text()
    assert "Traceback" not in done.stdout + done.stderr  # in the logs only
    assert (
        "Traceback" in (artifacts / "dose_100000/baseline/test/ptychi.log").read_text()
    )


# The runner's own contract, with plain nodes (a mock run, not the study).


def same(value: int) -> int:
    return value


def die(value: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return value


def test_a_group_whose_worker_dies_twice_is_an_error_after_the_others_ran(
    monkeypatch,
):
    monkeypatch.setattr(pool, "available_cores", lambda: 2)
    monkeypatch.setattr(pool, "visible_gpus", lambda: [])
    pipeline = Pipeline(
        [
            Node(same, "a.start", "a.end", name="copy", namespace="a"),
            Node(die, "b.start", "b.end", name="die", namespace="b"),
            Node(same, "c.start", "c.end", name="copy", namespace="c"),
        ]
    )
    catalog = DataCatalog(
        {name: MemoryDataset(1) for name in ("a.start", "b.start", "c.start")}
    )

    # How it ended (SIGKILL here) is best effort: the e2e tests above check it.
    with pytest.raises(
        WorkerLostError, match=r"b: the worker process .* during b\.die"
    ):
        PoolRunner().run(pipeline, catalog)

    assert catalog.load("a.end") == 1 and catalog.load("c.end") == 1


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (-signal.SIGKILL, "was killed (SIGKILL: often the kernel's out-of-memory"),
        (-signal.SIGSEGV, "crashed (SIGSEGV"),
        (-signal.SIGTERM, "was ended by signal 15 (SIGTERM)"),
        (3, "exited with code 3"),
    ],
)
def test_how_a_worker_ended_is_said_in_words(code, words):
    assert describe_exit(code).startswith(words)


def test_workers_per_gpu_takes_a_number_or_auto():
    assert PoolRunner(workers_per_gpu="auto")._workers_per_gpu == "auto"
    with pytest.raises(ValueError, match="whole number of at least 1 or auto"):
        PoolRunner(workers_per_gpu="many")


def tagged_processes(tag: str) -> list[int]:
    """The processes whose environment carries ``FLY64_TEST_TAG=tag``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"FLY64_TEST_TAG={tag}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study's project, its study simulated."""
    root = tmp_path_factory.mktemp("simulated")
    project = make_tiny_project(
        root,
        DESIGN.doses,
        TINY,
        design={"views": list(DESIGN.views), "splits": ["test"]},
    )
    run_kedro(project, "run", "--env", "tiny", "--pipeline", "simulate", timeout=300)
    return project


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_workers_end_with_a_killed_kedro_run(simulated, tmp_path):
    """kill -9 of `kedro run` while its workers reconstruct: no worker lives on to
    finish a job nobody waits for."""
    project = simulated
    tag = f"kill-{os.getpid()}"
    long_jobs = (
        "ptychi_baseline.lsqml.reconstructor_options.num_epochs=100000,"
        f"ptychi_baseline.convergence.stop=false,artifact_root={tmp_path / 'out'}"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "kedro", "run", "--env", "tiny"]
        + ["--pipeline", "ptychi_baseline", "--params", long_jobs],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "FLY64_TEST_TAG": tag},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(tagged_processes(tag)) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)  # the run, its fork server and two workers
        assert len(tagged_processes(tag)) >= 4, "the workers never started"
        time.sleep(3)  # into the jobs
        run.kill()
        run.wait(timeout=30)
        deadline = time.monotonic() + 20
        while tagged_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert tagged_processes(tag) == []
    finally:
        for pid in tagged_processes(tag):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.e2e
def test_a_full_disk_stops_the_run_in_one_line_its_traceback_in_the_log(
    simulated, tmp_path
):
    disk = tmp_path / "full"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        done = run_kedro(
            simulated,
            *("run", "--env", "tiny", "--pipeline", "ptychi_baseline"),
            *("--params", f"artifact_root={disk / 'out'}"),
            env={"COLUMNS": "120"},
            timeout=300,
        )
        (log,) = (disk / "out" / "logs").glob("run-*.log")
        logged = log.read_text()
    finally:
        subprocess.run(["umount", str(disk)], check=True)

    output = done.stdout + done.stderr
    assert done.returncode == 1
    (error,) = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert "[Errno 28] could not write" in error and "No space left on device" in error
    assert "the traceback is in the run's log" in error
    assert "Traceback" not in output and len(output.splitlines()) < 15
    assert "Traceback" in logged and "No space left on device" in logged
