"""Faults during real ``ptychi_baseline`` runs: SIGKILL, divergence, OOM, two runs, full disk.

One tiny study (two doses, N = 16) serves every test; each test gets its own artifact
root (the divergence reuses the concurrent runs' results). Kills and concurrent runs
use ``kedro run`` subprocesses; the divergence, the GPU out-of-memory double and the
full disk run the pipeline in this process through a ``KedroSession``, so pty-chi is
imported once for the three.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from matplotlib.image import imread
from test_reliability import (
    MANIFEST,
    RECONSTRUCTION,
    Study,
    add_environment,
    kedro_command,
    kedro_env,
    kedro_run,
    load_npz,
    manifest_jobs,
    sha256,
    write_study,
)

from fly64_recon.datasets import atomic
from fly64_recon.hooks import JobsFailedError
from fly64_recon.pipelines.ptychi_baseline import task
from fly64_recon.study import Job, StudyDesign

pytestmark = pytest.mark.e2e

ENV = "faults"
DESIGN = StudyDesign(doses=(1000.0, 100000.0))
PARAMS = {
    "device": "cpu",
    "lsqml": {"reconstructor_options": {"num_epochs": 2, "batch_size": 16}},
}
# Four jobs of ~30 patterns; ten epochs give a kill time to land inside a job. One
# node at a time in one process (the kills count on Kedro's order, and the patched
# atomic writes live in the kedro process).
KILL_SELECTION = (
    *("--namespace", "dose_1e3.baseline", "--namespace", "dose_1e3.dense"),
    *("--runner", "SequentialRunner"),
)
KILL_JOBS = [
    job for job in DESIGN.jobs() if job.dose == 1000.0 and job.view != "sparse"
]
SLOW = {"ptychi_baseline.lsqml.reconstructor_options.num_epochs": 10}
JOB_LINE = "fly64_recon.hooks INFO job "

# Runs `kedro ...` with fly64_recon's atomic writes cut short: the N-th temporary file
# written for TARGET gets half its bytes, then the process SIGKILLs itself.
KILL_AT_SAVE = """\
import os, signal, sys, types
from fly64_recon.datasets import atomic

TARGET, NTH = sys.argv[1], int(sys.argv[2])
paths, seen = {}, [0]


def open_(path, flags, mode=0o777):
    fd = os.open(path, flags, mode)
    paths[fd] = os.path.basename(path)
    return fd


class HalfThenKill:
    def __init__(self, handle):
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def fdopen(fd, *args, **kwargs):
    handle = os.fdopen(fd, *args, **kwargs)
    if paths.pop(fd, "").startswith(f".{TARGET}.tmp-"):
        seen[0] += 1
        if seen[0] == NTH:
            return HalfThenKill(handle)
    return handle


atomic.os = types.SimpleNamespace(**{**vars(os), "open": open_, "fdopen": fdopen})
sys.argv = sys.argv[3:]  # kedro run ...
from kedro.framework.cli import main

main()
"""


@pytest.fixture(scope="module")
def study(tiny_kedro_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Study:
    add_environment(tiny_kedro_project, ENV, DESIGN.doses, PARAMS)
    return write_study(tmp_path_factory.mktemp("faults"), DESIGN.doses)


# What every test checks after the dust settles.


def temp_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".tmp-" in p.name}


def assert_sound(root: Path, leftovers: set[Path] = frozenset()) -> None:
    """Every output parses; the only temporary files are a killed run's leftovers."""
    assert temp_files(root) <= set(leftovers)
    for path in root.rglob("*"):
        if not path.is_file() or path in leftovers:
            continue
        if path.suffix == ".npz":
            arrays = load_npz(path)
            assert all(
                np.isfinite(a).all() for a in arrays.values() if a.dtype.kind in "fc"
            )
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            assert imread(path).ndim == 3
        elif path.suffix == ".log":
            path.read_text()


def assert_manifest(study: Study, expected: dict[str, str]) -> None:
    """The selected jobs have ``expected`` statuses; the design's others are not_run."""
    jobs = manifest_jobs(study)
    statuses = {job.namespace: jobs[job.namespace]["status"] for job in DESIGN.jobs()}
    want = {job.namespace: "not_run" for job in DESIGN.jobs()} | expected
    assert statuses == want
    manifest = json.loads((study.artifacts / MANIFEST).read_text())
    assert manifest["total_jobs"] == len(DESIGN.jobs())
    for status in set(want.values()):
        assert manifest["counts"][status] == list(want.values()).count(status)
    for job in DESIGN.jobs():
        entry = jobs[job.namespace]
        if entry["status"] in ("succeeded", "cached"):
            assert entry["input_sha256"] == sha256(study.input_path(job))
            provenance = json.loads(
                str(load_npz(study.folder(job) / RECONSTRUCTION)["provenance"])
            )
            assert entry["final_loss"] == provenance["final_loss"]


def finished(study: Study, jobs: list[Job]) -> dict[Job, str]:
    """The jobs whose reconstruction is on disk, with the file's sha256."""
    return {
        job: sha256(study.folder(job) / RECONSTRUCTION)
        for job in jobs
        if (study.folder(job) / RECONSTRUCTION).exists()
    }


# SIGKILL: one artifact tree, killed three times, then run to the end.


def test_sigkill_during_saves_and_a_reconstruction_then_rerun(
    tiny_kedro_project, study, tmp_path
):
    """Kill 1: half-way through the second job's NPZ. Kill 2 (killpg of a plain run):
    while the third job reconstructs. Kill 3: half-way through the second manifest
    update, with the manifest's file lock held. Then a plain rerun.

    Kedro runs every job's reconstruction before any job's record, so kills 1 and 2
    leave no manifest, and kill 3 one that holds the first job's entry.
    """
    study = study.with_artifacts(tmp_path / "artifacts")
    written: dict[Job, str] = {}  # each job's NPZ as first written: never rewritten

    def after_kill(done: int, leftovers: int) -> set[Path]:
        now = finished(study, KILL_JOBS)
        assert {job: now[job] for job in written} == written, "an NPZ was rewritten"
        written.update(now)
        assert len(now) == done
        temps = temp_files(study.artifacts)
        assert len(temps) == leftovers and all(p.stat().st_size for p in temps)
        assert_sound(study.artifacts, temps)
        return temps

    killed = kill_at_save(tiny_kedro_project, study, tmp_path, RECONSTRUCTION)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    (partial,) = after_kill(done=1, leftovers=1)
    assert partial.name.startswith(f".{RECONSTRUCTION}.tmp-")
    assert not (partial.parent / RECONSTRUCTION).exists()

    running = kill_while_reconstructing(tiny_kedro_project, study, tmp_path, after=2)
    after_kill(done=2, leftovers=1)
    assert not (study.folder(running) / RECONSTRUCTION).exists()
    assert not (study.artifacts / MANIFEST).exists()

    killed = kill_at_save(tiny_kedro_project, study, tmp_path, MANIFEST)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    leftovers = after_kill(done=len(KILL_JOBS), leftovers=2)
    assert any(p.name.startswith(f".{MANIFEST}.tmp-") for p in leftovers)
    statuses = Counter(e["status"] for e in manifest_jobs(study).values())
    assert statuses in ({"not_run": 11, "cached": 1}, {"not_run": 11, "succeeded": 1})

    # The rerun takes the manifest's lock again (a dead owner's must not block it),
    # recomputes nothing, and ignores the dead runs' temporary files.
    rerun = kedro_run(
        tiny_kedro_project, kedro_command(ENV, study, *KILL_SELECTION, **SLOW)
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert_manifest(study, {job.namespace: "cached" for job in KILL_JOBS})
    assert finished(study, KILL_JOBS) == written
    assert_sound(study.artifacts, leftovers)


def kill_at_save(
    project: Path, study: Study, tmp_path: Path, target: str
) -> subprocess.CompletedProcess[str]:
    """A run that SIGKILLs itself half-way through writing its second ``target``."""
    wrapper = tmp_path / "kill_at_save.py"
    wrapper.write_text(KILL_AT_SAVE)
    return kedro_run(
        project,
        kedro_command(ENV, study, *KILL_SELECTION, **SLOW),
        launcher=(sys.executable, str(wrapper), target, "2"),
    )


def kill_while_reconstructing(
    project: Path, study: Study, tmp_path: Path, after: int
) -> Job:
    """Start a run; SIGKILL its process group once ``after`` jobs are on disk and the
    next one has started. Returns the job that was running."""
    log = tmp_path / "killed_run.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", *kedro_command(ENV, study, *KILL_SELECTION, **SLOW)],
            cwd=project,
            env=kedro_env(project),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )
    try:
        wait_until(lambda: started(log) > after <= len(finished(study, KILL_JOBS)), run)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL
    lines = [line for line in log.read_text().splitlines() if JOB_LINE in line]
    assert len(lines) == after + 1
    return Job.from_namespace(lines[-1].rsplit(": ", 1)[-1])


def started(log: Path) -> int:
    """How many reconstruction jobs the run has started ("job k of n: namespace")."""
    return log.read_text().count(JOB_LINE)


def wait_until(condition: Any, run: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.02)


# Two runs at once.


@dataclass(frozen=True)
class Concurrent:
    study: Study
    lifetimes: list[tuple[datetime, datetime]]  # first and last log line of each run


@pytest.fixture(scope="module")
def concurrent(
    tiny_kedro_project: Path, study: Study, tmp_path_factory: pytest.TempPathFactory
) -> Concurrent:
    """``kedro run --namespace dose_1e3`` and ``--namespace dose_1e5`` at the same time."""
    study = study.with_artifacts(tmp_path_factory.mktemp("concurrent") / "artifacts")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", *kedro_command(ENV, study, "--namespace", dose)],
            cwd=tiny_kedro_project,
            env=kedro_env(tiny_kedro_project),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for dose in ("dose_1e3", "dose_1e5")
    ]
    lifetimes = []
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output[-3000:]
        stamps = [
            datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            for line in output.splitlines()
            if line[:4].isdigit()
        ]
        lifetimes.append((min(stamps), max(stamps)))
    return Concurrent(study, lifetimes)


def test_two_runs_on_different_namespaces_at_once_both_land(concurrent):
    study = concurrent.study

    assert_manifest(study, {job.namespace: "succeeded" for job in DESIGN.jobs()})
    (start_a, end_a), (start_b, end_b) = concurrent.lifetimes
    assert start_a < end_b and start_b < end_a, "the two runs did not overlap"
    summary = json.loads((study.artifacts / "skip_summary.json").read_text())
    assert summary == {"skipped_count": 0, "skipped_jobs": []}
    assert_sound(study.artifacts)


# In-process runs (pty-chi imported once): divergence, a GPU out-of-memory double,
# a full disk.


def run_in_process(
    project: Path,
    study: Study,
    namespaces: list[str],
    monkeypatch: pytest.MonkeyPatch,
    params: dict[str, Any] | None = None,
) -> None:
    """``kedro run --pipelines ptychi_baseline --namespaces ... --params ...`` here."""
    monkeypatch.chdir(project)
    bootstrap_project(project)
    roots = {
        "phase_c_root": str(study.phase_c),
        "phase_d_root": str(study.phase_d),
        "artifact_root": str(study.artifacts),
        **(params or {}),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess runs (see kedro_env)
    try:
        with KedroSession.create(project, env=ENV, runtime_params=roots) as session:
            session.run(pipeline_names=["ptychi_baseline"], namespaces=namespaces)
    finally:
        torch.set_num_threads(threads)


def test_a_diverging_reconstruction_fails_and_keeps_the_earlier_result(
    tiny_kedro_project, concurrent, monkeypatch
):
    """A huge object step size makes real LSQML blow up to NaN within four epochs."""
    study = concurrent.study  # every job succeeded there
    job = Job(1000.0, "baseline", "train")
    npz = study.folder(job) / RECONSTRUCTION
    earlier = sha256(npz)
    lsqml_params = {
        "reconstructor_options": {"num_epochs": 4},
        "object_options": {"step_size": 1e6},
    }
    diverge = {"ptychi_baseline": {"lsqml": lsqml_params}}

    with pytest.raises(JobsFailedError) as info:
        run_in_process(tiny_kedro_project, study, [job.namespace], monkeypatch, diverge)

    entry = manifest_jobs(study)[job.namespace]
    assert f"  - {job.namespace}: reconstruction diverged: loss is nan" in str(
        info.value
    )
    assert entry["status"] == "failed"
    assert entry["reason"].startswith("reconstruction diverged: loss is nan at epoch")
    assert entry["final_loss"] is None
    assert sha256(npz) == earlier  # the earlier success, not a NaN result
    assert json.loads(str(load_npz(npz)["provenance"]))["status"] == "succeeded"
    assert "diverged" in (study.folder(job) / "ptychi.log").read_text()
    assert_sound(study.artifacts)  # no NaN anywhere in any NPZ


def test_gpu_out_of_memory_fails_its_job_with_advice_and_the_rest_run(
    tiny_kedro_project, study, tmp_path, monkeypatch
):
    study = study.with_artifacts(tmp_path / "artifacts")
    victim = Job(1000.0, "sparse", "train")  # the only job with its positions
    victim_arrays = load_npz(study.input_path(victim))
    real_run = task.run_engine

    def out_of_memory_for_the_victim(inputs, options, device, on_epoch, cpu_threads):
        x, y = task.from_ptychi_positions(
            inputs.position_x_px, inputs.position_y_px, inputs.object_init.shape[1:]
        )
        victim_x, victim_y = victim_arrays["xcoords"], victim_arrays["ycoords"]
        if x.shape == victim_x.shape and np.allclose((x, y), (victim_x, victim_y)):
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1.00 GiB free)"
            )
        return real_run(inputs, options, device, on_epoch, cpu_threads)

    monkeypatch.setattr(task, "run_engine", out_of_memory_for_the_victim)

    with pytest.raises(JobsFailedError, match=f"1 of 6 .*\n  - {victim.namespace}: "):
        run_in_process(tiny_kedro_project, study, ["dose_1e3"], monkeypatch)

    dose_1e3 = [job for job in DESIGN.jobs() if job.dose == 1000.0]
    assert_manifest(
        study,
        {job.namespace: "failed" if job == victim else "succeeded" for job in dose_1e3},
    )
    reason = manifest_jobs(study)[victim.namespace]["reason"]
    assert reason.startswith("out of memory on the GPU: CUDA out of memory")
    assert "batch_size (now 16)" in reason
    assert not (study.folder(victim) / RECONSTRUCTION).exists()


@pytest.fixture(params=["tmpfs", "patched_write"])
def full_disk(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A folder on a real 8 KiB tmpfs (root only), or one whose atomic writes store
    half their bytes, then fail with ENOSPC (``fly64_recon.datasets.atomic`` patched)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if request.param == "patched_write":
        monkeypatch.setattr(atomic, "os", _disk_full_os())
        yield folder
        return
    if not _mount_tmpfs(folder, "8k"):
        pytest.skip("cannot mount a tmpfs here (not root?); patched_write covers it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _mount_tmpfs(folder: Path, size: str) -> bool:
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    try:
        return subprocess.run(command, capture_output=True, check=False).returncode == 0
    except OSError:
        return False


def _disk_full_os() -> types.SimpleNamespace:
    """``os`` for atomic writes on a full disk: a write stores half, then ENOSPC."""

    class HalfThenFull:
        def __init__(self, handle: Any) -> None:
            self._handle = handle

        def __enter__(self) -> HalfThenFull:
            return self

        def __exit__(self, *exc: object) -> None:
            self._handle.close()

        def write(self, data: bytes) -> int:
            self._handle.write(data[: len(data) // 2])
            self._handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> HalfThenFull:
        return HalfThenFull(os.fdopen(fd, *args, **kwargs))

    return types.SimpleNamespace(**{**vars(os), "fdopen": fdopen})


def test_a_full_disk_gives_a_clear_error_and_no_partial_file(
    tiny_kedro_project, study, full_disk, monkeypatch
):
    study = study.with_artifacts(full_disk / "artifacts")
    job = Job(1000.0, "baseline", "train")
    target = study.folder(job) / RECONSTRUCTION

    with pytest.raises(Exception) as info:
        run_in_process(tiny_kedro_project, study, [job.namespace], monkeypatch)

    message = str(info.value)
    assert f"[Errno 28] could not write {target}: No space left on device" in message
    assert list(study.artifacts.rglob("*.npz")) == []
    assert temp_files(study.artifacts) == set()
    assert not (study.artifacts / MANIFEST).exists()
