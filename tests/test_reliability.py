"""The bad-input matrix through one real ``kedro run --pipeline ptychi_baseline``.

A tiny study of six doses (36 jobs) is simulated by the simulate pipeline's own nodes;
each bad case below replaces a different job's input file and the rest stay good. The
pipeline runs once, in a subprocess, for the whole matrix; every case is then a test
that reads the manifest and the job's folder. Files planted in the artifact tree before
the run (a user's notes, an earlier reconstruction of a job that now gets a bad input,
a manifest entry of another study) must come out of the run untouched.

The helpers at the top are shared with ``test_faults.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import PROJECT_ROOT, simulate_phase_c, tiny_simulate_params

from fly64_recon.datasets import JobArtifacts, JobFolderDataset, npz_bytes
from fly64_recon.science import views
from fly64_recon.study import Job, StudyDesign

pytestmark = pytest.mark.e2e

RECONSTRUCTION = "ptychi_reconstruction.npz"
MANIFEST = "reconstruction_manifest.json"
PLAIN_LOGGING = """\
version: 1
disable_existing_loggers: false
formatters:
  plain: {format: "%(asctime)s %(name)s %(levelname)s %(message)s"}
handlers:
  console: {class: logging.StreamHandler, formatter: plain}
loggers:
  kedro: {level: INFO}
  fly64_recon: {level: INFO}
  ptychi: {level: WARNING}
root: {handlers: [console]}
"""


# Shared helpers: a study on disk, a Kedro environment for it, a `kedro run`.


@dataclass(frozen=True)
class Study:
    """Input roots and artifact root of one study run."""

    phase_c: Path
    phase_d: Path
    artifacts: Path

    def input_path(self, job: Job) -> Path:
        root = self.phase_c if job.view == "baseline" else self.phase_d
        return root / job.input_relpath

    def folder(self, job: Job) -> Path:
        return self.artifacts / job.output_relpath

    def with_artifacts(self, artifacts: Path) -> Study:
        return Study(self.phase_c, self.phase_d, artifacts)

    def params(self, **extra: Any) -> str:
        """The value of ``kedro run --params`` for these roots (and extra parameters)."""
        values = {
            "phase_c_root": self.phase_c,
            "phase_d_root": self.phase_d,
            "artifact_root": self.artifacts,
            **extra,
        }
        return ",".join(f"{key}={value}" for key, value in values.items())


def add_environment(
    project: Path, env: str, doses: Iterable[float], ptychi_baseline: dict[str, Any]
) -> None:
    """``conf/<env>``: the study's doses and the ptychi_baseline parameters that differ."""
    folder = project / "conf" / env
    folder.mkdir(exist_ok=True)
    study = {"study": {"doses": [float(d) for d in doses]}}
    (folder / "globals.yml").write_text(yaml.safe_dump(study))
    params = {"ptychi_baseline": ptychi_baseline}
    (folder / "parameters_ptychi_baseline.yml").write_text(yaml.safe_dump(params))
    (project / "logging_plain.yml").write_text(PLAIN_LOGGING)


# The original study's fractions (the embedded study's are in conf/base/globals.yml).
VIEW_OVERLAP = {"dense": 0.7, "sparse": 0.2}


def write_study(root: Path, doses: Iterable[float]) -> Study:
    """Phase C and D files of every job (N = 16), made by the simulate nodes."""
    params = tiny_simulate_params(patch_size=16, object_size=64, rows=8)
    study = Study(root / "phase_c", root / "phase_d", root / "artifacts")
    design = StudyDesign(doses=tuple(doses), overlap=VIEW_OVERLAP)
    for dose in design.doses:
        baseline = simulate_phase_c(params, dose)
        for job in design.jobs():
            if job.dose != dose:
                continue
            arrays = baseline[job.split]
            if job.view != "baseline":
                overlap = design.overlap_of(job.view)
                arrays = views.select_view(
                    arrays, params, view=job.view, overlap=overlap
                )
            path = study.input_path(job)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(npz_bytes(arrays))
    return study


def kedro_env(project: Path) -> dict[str, str]:
    """The environment of a ``kedro run`` subprocess: no telemetry, plain logs.

    One torch thread: these jobs are tiny, and on a shared 2-core machine threads
    waiting for each other make them several times slower.
    """
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
        "KEDRO_LOGGING_CONFIG": str(project / "logging_plain.yml"),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }


def kedro_command(env: str, study: Study, *args: str, **params: Any) -> list[str]:
    """``kedro run --pipelines ptychi_baseline`` of ``env`` on ``study``'s roots."""
    return [
        *("kedro", "run", "--pipelines", "ptychi_baseline", "--env", env),
        *("--params", study.params(**params)),
        *args,
    ]


def kedro_run(
    project: Path,
    command: list[str],
    launcher: Iterable[str] = (sys.executable, "-m"),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a Kedro command in ``project``; stdout and stderr together in ``stdout``."""
    return subprocess.run(
        [*launcher, *command],
        check=False,
        cwd=project,
        env=kedro_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def manifest_jobs(study: Study) -> dict[str, dict[str, Any]]:
    """The manifest's entries by namespace."""
    manifest = json.loads((study.artifacts / MANIFEST).read_text())
    return {entry["namespace"]: entry for entry in manifest["jobs"]}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return dict(npz)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plant_reconstruction(study: Study, job: Job) -> None:
    """An earlier successful reconstruction of ``job``, as the pipeline writes one."""
    record = {"namespace": job.namespace, "status": "succeeded", "input_sha256": "0"}
    arrays = {
        "reconstructed_object": np.full((64, 64), 0.5 + 0.5j, np.complex64),
        "reconstructed_probe": np.ones((1, 1, 16, 16), np.complex64),
        "loss": np.array([2.0, 1.0]),
    }
    folder = JobFolderDataset(path=str(study.artifacts), namespace=job.namespace)
    folder.save(JobArtifacts(record, arrays, "earlier run\n", provenance=record))


# The bad cases.

DESIGN = StudyDesign(doses=(1000.0, 2000.0, 3000.0, 5000.0, 10000.0, 20000.0))
ENV = "reliability"
PARAMS = {
    "device": "cpu",
    "lsqml": {"reconstructor_options": {"num_epochs": 2, "batch_size": 16}},
}

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One bad input: how to spoil a good file, and what the job must say about it."""

    name: str
    spoil: Callable[[Arrays], bytes | None]  # None: the file is removed
    key: str | None  # the key the reason names (None: the file as a whole)
    problem: tuple[str, ...]
    status: str = "failed"


def changed(**changes: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """A good file with some arrays changed."""

    def spoil(good: Arrays) -> bytes:
        return npz_bytes({**good, **{k: f(good[k]) for k, f in changes.items()}})

    return spoil


def without(key: str) -> Callable:
    def spoil(good: Arrays) -> bytes:
        return npz_bytes({k: v for k, v in good.items() if k != key})

    return spoil


def poked(index: tuple[int, ...], value: float) -> Callable[[np.ndarray], np.ndarray]:
    """A copy with one element set to ``value``."""

    def poke(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[index] = value
        return out

    return poke


def first_patterns(count: int) -> Callable:
    """Keep only the first ``count`` patterns and their per-position vectors."""
    per_position = ("diffraction", "xcoords", "ycoords", "scan_index")
    return changed(**{k: (lambda a: a[:count]) for k in per_position})


class CreatesMarker:
    """Unpickling this creates a file: proof that a payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> Callable:
    """A good file plus an object array ``filenames`` whose unpickling creates ``marker``."""

    def spoil(good: Arrays) -> bytes:
        return pickle_payload_npz(good, marker)

    return spoil


def pickle_payload_npz(good: Arrays, marker: Path) -> bytes:
    payload = np.empty(1, dtype=object)
    payload[0] = CreatesMarker(marker)
    buffer = io.BytesIO()
    np.savez(buffer, **good, filenames=payload)
    return buffer.getvalue()


def truncated(good: Arrays) -> bytes:
    data = npz_bytes(good)
    return data[: len(data) // 2]


def npy_not_npz(good: Arrays) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, good["diffraction"])  # np.save instead of np.savez
    return buffer.getvalue()


def cases(marker: Path) -> list[Case]:
    missing_keys = [
        Case(f"missing_{key}", without(key), key, ("required key is missing",))
        for key in ("diffraction", "probeGuess", "objectGuess", "xcoords", "ycoords")
    ]
    return [
        Case(
            "missing_file",
            lambda good: None,
            None,
            ("input file not found",),
            "skipped",
        ),
        Case("empty_file", lambda good: b"", None, ("empty file (0 bytes)",)),
        Case("truncated_npz", truncated, None, ("truncated or corrupt zip archive",)),
        Case("not_a_zip", npy_not_npz, None, ("not a zip archive",)),
        Case(
            "pickle_payload",
            pickled(marker),
            "filenames",
            ("cannot be read", "allow_pickle=False"),
        ),
        *missing_keys,
        Case(
            "integer_diffraction",
            changed(diffraction=lambda a: np.rint(a).astype(np.int32)),
            "diffraction",
            ("dtype int32 is not real floating",),
        ),
        Case(
            "complex_diffraction",
            changed(diffraction=lambda a: a.astype(np.complex64)),
            "diffraction",
            ("dtype complex64 is not real floating",),
        ),
        Case(
            "nan_in_diffraction",
            changed(diffraction=poked((0, 8, 8), np.nan)),
            "diffraction",
            ("not finite", "1 NaN"),
        ),
        Case(
            "inf_in_diffraction",
            changed(diffraction=poked((1, 2, 3), np.inf)),
            "diffraction",
            ("not finite", "1 Inf"),
        ),
        Case(
            "nan_in_xcoords",
            changed(xcoords=poked((2,), np.nan)),
            "xcoords",
            ("not finite",),
        ),
        Case(
            "inf_in_ycoords",
            changed(ycoords=poked((0,), -np.inf)),
            "ycoords",
            ("not finite",),
        ),
        Case(
            "negative_amplitudes",
            changed(diffraction=poked((0, 0, 0), -1.0)),
            "diffraction",
            ("1 of", "negative"),
        ),
        Case(
            "intensity_saved_as_amplitude",
            changed(diffraction=np.square),
            "diffraction",
            ("intensity saved as amplitude",),
        ),
        Case("zero_patterns", first_patterns(0), "diffraction", ("no patterns",)),
        Case(
            "two_dimensional_diffraction",
            changed(diffraction=lambda a: a[0]),
            "diffraction",
            ("is not 3-D",),
        ),
        Case(
            "coordinate_length_mismatch",
            changed(xcoords=lambda a: a[:-1]),
            "xcoords",
            ("differs from the", "diffraction patterns"),
        ),
        Case(
            "probe_shape_differs",
            changed(probeGuess=lambda a: np.pad(a, 2)),
            "probeGuess",
            ("(20, 20) differs from the pattern size (16, 16)",),
        ),
        Case(
            "object_smaller_than_probe",
            changed(objectGuess=lambda a: a[:12, :12]),
            "objectGuess",
            ("smaller than the 16 x 16 probe",),
        ),
        Case(
            "positions_outside_the_object",
            changed(xcoords=lambda a: a + 100.0),
            "objectGuess",
            ("fall outside the 64 x 64 object",),
        ),
        Case(
            "metadata_not_json",
            changed(_metadata=lambda a: np.array("{dose: 1000")),
            "_metadata",
            ("not valid JSON",),
        ),
        Case(
            "dc_term_in_the_corner",
            changed(diffraction=lambda a: np.fft.ifftshift(a, axes=(1, 2))),
            "diffraction",
            ("DC term is in the corner",),
        ),
        Case(
            "all_zero_probe",
            changed(probeGuess=np.zeros_like),
            "probeGuess",
            ("is all zero",),
        ),
        Case(
            "repeated_positions",
            changed(
                xcoords=lambda a: np.full_like(a, a[0]),
                ycoords=lambda a: np.full_like(a, a[0]),
            ),
            "xcoords",
            ("repeat an earlier (xcoords, ycoords) exactly",),
        ),
    ]


CASES = cases(marker=Path("never-written"))  # names and expectations
CASE_NAMES = [case.name for case in CASES]
# Case i spoils job i of the design; the jobs after the last case stay good.
CASE_JOBS = dict(zip(CASE_NAMES, DESIGN.jobs(), strict=False))
GOOD_JOBS = DESIGN.jobs()[len(CASE_NAMES) :]
# An earlier success of a job that now gets a bad (or no) input must survive the run.
EARLIER = ("nan_in_diffraction", "missing_file")


@dataclass(frozen=True)
class Matrix:
    """The study after the one run, with what the tests compare against."""

    study: Study
    result: subprocess.CompletedProcess[str]
    cases: dict[str, Case]
    before: dict[Path, str]  # sha256 of every file that existed before the run
    foreign_entry: dict[str, Any]
    marker: Path


@pytest.fixture(scope="module")
def matrix(
    tiny_kedro_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Matrix:
    """Spoil one job's input per case, plant earlier files, run the pipeline once."""
    root = tmp_path_factory.mktemp("matrix")
    assert len(CASE_NAMES) <= len(DESIGN.jobs()) - 3, "keep a few good jobs"
    add_environment(tiny_kedro_project, ENV, DESIGN.doses, PARAMS)
    study = write_study(root, DESIGN.doses)
    marker = root / "payload_ran"
    by_name = {case.name: case for case in cases(marker)}
    for name, job in CASE_JOBS.items():
        path = study.input_path(job)
        spoilt = by_name[name].spoil(load_npz(path))
        if spoilt is None:
            path.unlink()
        else:
            path.write_bytes(spoilt)

    for name in EARLIER:
        plant_reconstruction(study, CASE_JOBS[name])
    (study.artifacts / "notes.txt").write_text("beamtime notes\n")
    (study.folder(GOOD_JOBS[0]) / "notes.txt").parent.mkdir(parents=True)
    (study.folder(GOOD_JOBS[0]) / "notes.txt").write_text("keep me\n")
    foreign = {"namespace": "dose_7e4.dense.test", "status": "succeeded", "x": 1}
    (study.artifacts / MANIFEST).write_text(json.dumps({"jobs": [foreign]}))
    before = {
        path: sha256(path)
        for root_ in (study.phase_c, study.phase_d, study.artifacts)
        for path in root_.rglob("*")
        if path.is_file() and path.name != MANIFEST
    }

    result = kedro_run(tiny_kedro_project, kedro_command(ENV, study))
    return Matrix(study, result, by_name, before, foreign, marker)


def reason_lines(reason: str, key: str | None, problem: Iterable[str]) -> list[str]:
    """The lines of a reason that name ``key`` (if any) and every problem fragment."""
    names = (f"- {key}: ", f"member '{key}'") if key else ("",)
    return [
        line
        for line in reason.splitlines()
        if any(name in line for name in names) and all(f in line for f in problem)
    ]


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_a_bad_input_fails_its_job_with_file_key_and_problem(matrix, name):
    case, job = matrix.cases[name], CASE_JOBS[name]
    entry = manifest_jobs(matrix.study)[job.namespace]
    path = str(matrix.study.input_path(job))

    assert entry["status"] == case.status, entry
    reason = entry["reason"]
    assert path in reason, reason
    assert reason_lines(reason, case.key, case.problem), reason
    record = json.loads((matrix.study.folder(job) / "job.json").read_text())
    assert (record["status"], record["reason"]) == (case.status, reason)
    if case.status == "failed":
        assert f"  - {job.namespace}: {path}" in matrix.result.stdout
    if name not in EARLIER:
        assert not (matrix.study.folder(job) / RECONSTRUCTION).exists()


def test_every_untouched_job_succeeds(matrix):
    jobs = manifest_jobs(matrix.study)

    for job in GOOD_JOBS:
        entry = jobs[job.namespace]
        assert entry["status"] == "succeeded", entry
        arrays = load_npz(matrix.study.folder(job) / RECONSTRUCTION)
        assert np.isfinite(arrays["reconstructed_object"]).all()
        assert entry["n_patterns"] == len(
            load_npz(matrix.study.input_path(job))["xcoords"]
        )


def test_the_run_exits_non_zero_listing_the_failed_jobs(matrix):
    failed = [n for n, c in matrix.cases.items() if c.status == "failed"]
    output = matrix.result.stdout
    manifest = json.loads((matrix.study.artifacts / MANIFEST).read_text())
    all_failed = [e["namespace"] for e in manifest["jobs"] if e["status"] == "failed"]

    assert matrix.result.returncode != 0
    count = f"{len(all_failed)} of {len(DESIGN.jobs())} reconstruction job(s) failed"
    assert count in output
    for namespace in all_failed:
        assert f"  - {namespace}: " in output
    assert {CASE_JOBS[name].namespace for name in failed} <= set(all_failed)
    design = {job.namespace for job in DESIGN.jobs()}
    statuses = Counter(
        e["status"] for e in manifest["jobs"] if e["namespace"] in design
    )
    assert statuses == {
        "failed": len(failed),
        "skipped": 1,
        "succeeded": len(GOOD_JOBS),
    }
    everything = Counter(e["status"] for e in manifest["jobs"])
    assert {k: v for k, v in manifest["counts"].items() if v} == everything
    summary = json.loads((matrix.study.artifacts / "skip_summary.json").read_text())
    assert [s["namespace"] for s in summary["skipped_jobs"]] == [
        CASE_JOBS["missing_file"].namespace
    ]


def test_the_pickle_payload_is_live_but_never_runs(matrix, tmp_path):
    live = tmp_path / "live"
    good = load_npz(matrix.study.input_path(GOOD_JOBS[0]))
    np.load(io.BytesIO(pickle_payload_npz(good, live)), allow_pickle=True)["filenames"]
    assert live.exists(), "the payload must really create its marker when unpickled"

    assert not matrix.marker.exists()


def test_nothing_that_existed_before_is_overwritten_or_lost(matrix):
    study = matrix.study
    spoilt_earlier = {study.folder(CASE_JOBS[name]) for name in EARLIER}
    # Inputs, notes, and the earlier reconstructions with their logs: the same bytes.
    # A job's record (job.json) and its figure describe its latest attempt, by design.
    kept = {
        path: digest
        for path, digest in matrix.before.items()
        if not (path.parent in spoilt_earlier and path.name == "job.json")
    }
    changed_ = [
        str(p) for p, digest in kept.items() if not p.exists() or sha256(p) != digest
    ]
    assert changed_ == []
    for folder in spoilt_earlier:
        assert {RECONSTRUCTION, "ptychi.log"} <= {p.name for p in folder.iterdir()}
    manifest = json.loads((study.artifacts / MANIFEST).read_text())
    assert matrix.foreign_entry in manifest["jobs"]
    assert not list(study.artifacts.glob("*.broken-*"))
