"""Nodes of one reconstruction job: validate -> reconstruct -> record.

A job never raises for a problem of its own data: it returns a record that says
``failed`` or ``skipped`` and why, so the other jobs of the study still run. The run as
a whole fails at the end (see ``hooks.py``).
"""

from __future__ import annotations

import io
import logging
import math
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fly64_recon.contract import ContractError, read_metadata, validate
from fly64_recon.datasets.job_folder import JobArtifacts
from fly64_recon.datasets.npz import NPZFormatError, NPZSource
from fly64_recon.pipelines.ptychi_baseline import lsqml
from fly64_recon.pipelines.ptychi_baseline.figures import job_figure
from fly64_recon.pipelines.ptychi_baseline.options import BaselineOptions
from fly64_recon.study import Job

logger = logging.getLogger(__name__)

ALGORITHM = "LSQML"


class MissingInputError(FileNotFoundError):
    """A study file is missing and ``ptychi_baseline.strict`` is on."""


class DivergedError(RuntimeError):
    """The reconstruction's loss or result is not finite."""


@dataclass
class CheckedInput:
    """A job's input after validation: arrays when ``ready``, else why not."""

    job: Job
    path: str
    status: str
    reason: str | None = None
    sha256: str | None = None
    arrays: dict[str, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)


def validate_input(
    source: NPZSource, params: Mapping[str, Any], job: Job
) -> CheckedInput:
    """Open the job's NPZ once (hash and arrays) and check it against DATA-001."""
    options = BaselineOptions.from_params(params)
    if not source.exists():
        reason = f"input file not found: {source.path}"
        if options.strict:
            raise MissingInputError(f"{job.namespace}: {reason} (strict: true)")
        logger.warning("%s skipped: %s", job.namespace, reason)
        return CheckedInput(job, source.path, "skipped", reason)
    try:
        arrays, sha256 = source.load()
        warnings = validate(arrays, source.path)
    except (NPZFormatError, ContractError, OSError) as error:
        logger.error("%s failed validation: %s", job.namespace, error)
        return CheckedInput(job, source.path, "failed", str(error))
    return CheckedInput(job, source.path, "ready", None, sha256, arrays, warnings)


def reconstruct(
    checked: CheckedInput, previous: JobArtifacts, params: Mapping[str, Any]
) -> JobArtifacts:
    """Run LSQML on a ready input, unless its outputs already match input and options."""
    options = BaselineOptions.from_params(params)
    record = _base_record(checked, options)
    if checked.status != "ready":
        return JobArtifacts({**record, "status": checked.status})
    if _is_cached(previous, record):
        reason = "outputs exist for this input (sha256) and these options"
        cached = {"input_npz": checked.path, "status": "cached", "reason": reason}
        return JobArtifacts({**previous.provenance, **cached})
    if options.dry_run:
        return JobArtifacts({**record, "status": "planned"})
    with _captured_log() as log:
        record = _run_job(checked, options, record)
    if record["status"] != "succeeded":
        return JobArtifacts(record, log=log.getvalue())
    arrays = record.pop("arrays")
    return JobArtifacts(record, arrays=arrays, log=log.getvalue(), provenance=record)


def _base_record(checked: CheckedInput, options: BaselineOptions) -> dict[str, Any]:
    job = checked.job
    return {
        "namespace": job.namespace,
        "dose": job.dose,
        "view": job.view,
        "split": job.split,
        "input_npz": checked.path,
        "input_sha256": checked.sha256,
        "algorithm": ALGORITHM,
        "num_epochs": options.num_epochs,
        "batch_size": options.batch_size,
        "object_init": options.object_init,
        "max_patterns": options.max_patterns,
        "subsample_seed": options.subsample_seed,
        "options_fingerprint": options.fingerprint(),
        "n_patterns": None,
        "n_patterns_total": None,
        "device": None,
        "worker": worker_name(),
        "status": None,
        "reason": checked.reason,
        "warnings": checked.warnings,
        "wall_time_s": None,
        "peak_gpu_memory_mb": None,
        "final_loss": None,
        "started_at": None,
        "finished_at": None,
    }


def _is_cached(previous: JobArtifacts, record: dict[str, Any]) -> bool:
    done = previous.provenance
    return (
        previous.arrays is not None
        and done.get("status") == "succeeded"
        and done.get("input_sha256") == record["input_sha256"]
        and done.get("options_fingerprint") == record["options_fingerprint"]
    )


def _run_job(
    checked: CheckedInput, options: BaselineOptions, record: dict[str, Any]
) -> dict[str, Any]:
    arrays = checked.arrays
    indices = subsample(len(arrays["diffraction"]), options)
    rows = _rows(indices, len(arrays["diffraction"]))
    record = {
        **record,
        "n_patterns": len(indices),
        "n_patterns_total": len(arrays["diffraction"]),
        "started_at": _now(),
    }
    try:
        device = lsqml.resolve_device(options.device)
        record["device"] = device
        inputs = lsqml.to_ptychi_inputs(
            arrays["diffraction"][rows],
            arrays["probeGuess"],
            arrays["objectGuess"],
            arrays["xcoords"][rows],
            arrays["ycoords"][rows],
            read_metadata(arrays).get("intensity_scale", 1.0),
            options.object_init,
        )
        result = lsqml.run_lsqml(
            inputs,
            lsqml.build_options(options.lsqml, device),
            device,
            _check_finite,
            options.cpu_threads,
        )
        _check_result(result)
    except Exception as error:  # noqa: BLE001 - any failure is this job's, not the study's
        logger.error("%s failed:\n%s", checked.job.namespace, traceback.format_exc())
        return {
            **record,
            "status": "failed",
            "reason": failure_reason(error, options),
            "finished_at": _now(),
        }
    x, y = lsqml.from_ptychi_positions(
        result.position_x_px, result.position_y_px, arrays["objectGuess"].shape
    )
    return {
        **record,
        "status": "succeeded",
        "device": result.device,
        "wall_time_s": result.wall_time_s,
        "peak_gpu_memory_mb": result.peak_gpu_memory_mb,
        "final_loss": float(result.loss[-1]),
        "finished_at": _now(),
        "arrays": {
            "reconstructed_object": result.object.astype(np.complex64),
            "reconstructed_probe": result.probe.astype(np.complex64),
            "xcoords": x,
            "ycoords": y,
            "pattern_index": indices,
            "loss": result.loss,
        },
    }


def subsample(n_patterns: int, options: BaselineOptions) -> np.ndarray:
    """Every pattern, or a seeded sorted subset of ``max_patterns``."""
    if options.max_patterns is None or options.max_patterns >= n_patterns:
        return np.arange(n_patterns)
    rng = np.random.default_rng(options.subsample_seed)
    return np.sort(rng.choice(n_patterns, options.max_patterns, replace=False))


def _rows(indices: np.ndarray, n_patterns: int) -> np.ndarray | slice:
    """``indices`` as a slice when they are every pattern: a slice copies nothing."""
    return slice(None) if len(indices) == n_patterns else indices


def _check_finite(epoch: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise DivergedError(f"reconstruction diverged: loss is {loss} at epoch {epoch}")


def _check_result(result: lsqml.LSQMLResult) -> None:
    for name in ("object", "probe"):
        if not np.isfinite(getattr(result, name)).all():
            raise DivergedError(f"reconstruction diverged: the {name} has NaN or Inf")


def failure_reason(error: BaseException, options: BaselineOptions) -> str:
    """One line a scientist can act on."""
    import torch  # noqa: PLC0415 - torch costs seconds; every kedro command imports this

    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error):
        return (
            f"out of memory on the GPU: {error}. Reduce "
            f"ptychi_baseline.lsqml.reconstructor_options.batch_size (now "
            f"{options.batch_size}) or set max_patterns"
        )
    if isinstance(error, DivergedError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@contextmanager
def _captured_log() -> Iterator[io.StringIO]:
    """Collect the log lines emitted while the block runs (this job's ``ptychi.log``)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.INFO)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root, ptychi = logging.getLogger(), logging.getLogger("ptychi")
    level = ptychi.level
    # pty-chi's per-epoch lines are INFO: the job log keeps them whatever the console shows.
    ptychi.setLevel(min(ptychi.getEffectiveLevel(), logging.INFO))
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        ptychi.setLevel(level)


def worker_name() -> str:
    """The Dask worker running this job (its ``--name``), or ``local`` outside Dask."""
    # A Dask worker has imported distributed; importing it here (0.3-0.6 s) would only
    # learn that a local run is local.
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return "local"
    try:
        return str(distributed.get_worker().name)
    except ValueError:
        return "local"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(artifacts: JobArtifacts) -> tuple[Figure, dict[str, Any]]:
    """The job's summary figure and its manifest entry, from what is on disk."""
    return job_figure(artifacts.record, artifacts.arrays), artifacts.record
