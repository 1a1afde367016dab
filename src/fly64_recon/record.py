"""A job's record (what ran, with what, how long, how well), where a job stands
(``JobStatus``), where a score of it stands (``ScoreStatus``), and its epochs as it
reports them.

``job.json``, the NPZ's provenance and the job's manifest entry are this record as JSON
(:meth:`JobRecord.to_dict`); :meth:`JobRecord.from_dict` reads them back. A new field
of the record is one line of :class:`JobRecord`. Like ``study.py``, this module imports
nothing of the project but the study, so pipelines, datasets and hooks all share it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from fly64_recon.study import Job

# The tag of the node that runs a job (its reconstruction): progress and the run's
# verdict count the nodes that carry it.
JOB_TAG = "job"

# A job's epochs, reported from inside it; the display listens (display/progress.py).
PROGRESS_LOGGER = "fly64_recon.progress"
_progress = logging.getLogger(PROGRESS_LOGGER)
# The console's data, whatever level a logging configuration gives ``fly64_recon``
# (a configuration that names this logger still decides).
_progress.setLevel(logging.INFO)

_WORKER: ContextVar[str] = ContextVar("fly64_recon_worker", default="local")
_LOST_WORKER: ContextVar[str | None] = ContextVar("fly64_recon_lost", default=None)


class JobStatus(str, Enum):
    """Where a job stands; the value is what its record says."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CACHED = "cached"
    PLANNED = "planned"
    NOT_RUN = "not_run"
    READY = "ready"  # validated, waiting for its reconstruction: never in a record

    def __str__(self) -> str:
        return self.value

    @property
    def has_reconstruction(self) -> bool:
        """Whether the job's folder holds a reconstruction of its input."""
        return self in (JobStatus.SUCCEEDED, JobStatus.CACHED)


class ScoreStatus(str, Enum):
    """Where a score stands; the value is what a score says."""

    SCORED = "scored"
    MISSING = "missing"  # no reconstruction to score
    FAILED = "failed"  # a reconstruction that could not be scored (its file, an error)
    NOT_SCORED = "not_scored"  # nothing to score against: no ground truth

    def __str__(self) -> str:
        return self.value


# The pty-chi reconstruction of a job, among the scored models of the comparison.
BASELINE = "ptychi"


# The statuses a record can have, in the order the manifest counts them.
OUTCOMES = tuple(status for status in JobStatus if status is not JobStatus.READY)


def job_fields(job: Job) -> dict[str, Any]:
    """The job's name and coordinates in the study, as every record starts."""
    return {
        "namespace": job.namespace,
        "dose": job.dose,
        "view": job.view,
        "split": job.split,
    }


@dataclass(frozen=True)
class JobRecord:
    """One job: its input, the options that ran, where, how long, how it ended."""

    job: Job
    status: JobStatus
    reason: str | None = None
    input_npz: str | None = None
    input_sha256: str | None = None
    engine: str | None = None  # the pty-chi engine: LSQML, EPIE, DM, ...
    num_epochs: int | None = None
    batch_size: int | None = None
    object_init: str | None = None
    max_patterns: int | None = None
    subsample_seed: int | None = None
    options_fingerprint: str | None = None
    # The starting probe: how many modes, and the factor its power was scaled by to
    # match the patterns (pty-chi's rescale_probe; None when the engine does it itself,
    # as LSQML does in its first epoch).
    probe_modes: int | None = None
    probe_power_rescale: float | None = None
    # The positions were refined (probe_position_options.optimizable).
    position_correction: bool | None = None
    n_patterns: int | None = None
    n_patterns_total: int | None = None
    device: str | None = None
    worker: str | None = None
    warnings: list[str] = field(default_factory=list)
    wall_time_s: float | None = None
    # On a GPU: the most memory the job's tensors held, and what torch's caching
    # allocator reserved for them (what the GPU lacked for other processes).
    peak_gpu_memory_mb: float | None = None
    peak_gpu_memory_reserved_mb: float | None = None
    # The one-off set-up the first job of a process pays on a GPU (CUDA context,
    # cuFFT plans, Triton kernels), timed apart from ``wall_time_s``.
    warmup_s: float | None = None
    final_loss: float | None = None
    # What the loss reaches for a reconstruction that explains its patterns down to
    # their shot noise (science.beam.shot_noise_loss; LSQML's Gaussian loss only).
    loss_floor: float | None = None
    # How the reconstruction ended (convergence.Verdict): epochs run, the rule that
    # judged, why it stopped, and the first epoch at which the loss had stopped
    # improving.
    epochs_run: int | None = None
    stop_rule: str | None = None  # object or loss (None: the engine is not judged)
    stop_reason: str | None = None
    converged: bool | None = None
    # The object rule's last measurement: its change over ``span`` epochs, in noise
    # floors, at low and at high spatial frequencies.
    object_change: Mapping[str, float] | None = None
    plateau_epoch: int | None = None
    # The scan as the beam saw it (fly64_recon.science.beam).
    probe_diameter_px: float | None = None
    overlap: float | None = None
    photons_per_pattern: float | None = None
    photons_per_px2: float | None = None
    # The scan's physical geometry (science.geometry: photon energy, detector distance
    # and pixel size, the object's pixel in metres), from the input or nominal.
    geometry: Mapping[str, float] | None = None
    # Two more reconstructions from interleaved halves of the patterns were made.
    half_dataset: bool | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # The evaluation's headline, in the manifest entry only (not in job.json).
    metrics: Mapping[str, Any] | None = None

    @property
    def namespace(self) -> str:
        return self.job.namespace

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON: the job's fields, then every field (metrics if any)."""
        data = job_fields(self.job)
        for name in _FIELDS:
            data[name] = getattr(self, name)
        data["status"] = self.status.value
        if self.metrics is None:
            del data["metrics"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        """A record read back from JSON; keys it does not know (``output_dir``) are left."""
        known = {name: data[name] for name in _FIELDS if name in data}
        if "algorithm" in data and "engine" not in data:
            # Records written before the engine had one name (until fly64_recon 0.1).
            known["engine"] = data["algorithm"]
        known["status"] = JobStatus(data["status"])
        return cls(Job.from_namespace(data["namespace"]), **known)


_FIELDS = tuple(f.name for f in fields(JobRecord) if f.name != "job")


@contextmanager
def running_on(worker: str) -> Iterator[None]:
    """Jobs built inside this block record ``worker`` as where they ran."""
    token = _WORKER.set(worker)
    try:
        yield
    finally:
        _WORKER.reset(token)


def current_worker() -> str:
    """The worker a runner placed this job on (:func:`running_on`), else ``local``."""
    return _WORKER.get()


@contextmanager
def after_lost_worker(reason: str | None) -> Iterator[None]:
    """Inside this block a job runs again after the worker that ran it died (``reason``
    says how); None: a first run."""
    token = _LOST_WORKER.set(reason)
    try:
        yield
    finally:
        _LOST_WORKER.reset(token)


def lost_worker() -> str | None:
    """How the worker that ran this job before died (:func:`after_lost_worker`): the
    job fails with it rather than run a second time. None on a first run."""
    return _LOST_WORKER.get()


def report_epoch(namespace: str, epoch: int, num_epochs: int, loss: float) -> None:
    """Job ``namespace`` has finished epoch ``epoch`` (1-based) of ``num_epochs``: a
    record on ``PROGRESS_LOGGER`` with the numbers as attributes (``extra``)."""
    _progress.info(
        "%s: epoch %d of %d, loss %.6g",
        namespace,
        epoch,
        num_epochs,
        loss,
        extra={
            "namespace": namespace,
            "epoch": epoch,
            "num_epochs": num_epochs,
            "loss": loss,
        },
    )
