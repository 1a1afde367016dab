"""Nodes of one reconstruction job: validate -> reconstruct -> record.

A job never raises for a problem of its own data: its record (a ``JobRecord``, born in
``reconstruct``) says ``failed`` or ``skipped`` and why, so the other jobs of the study
still run. The run as a whole fails at the end (see ``hooks.py``).
"""

from __future__ import annotations

import io
import logging
import math
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fly64_recon import devices
from fly64_recon.contract import ContractError, read_metadata, validate
from fly64_recon.datasets.job_folder import JobArtifacts
from fly64_recon.datasets.npz import NPZFormatError, NPZSource
from fly64_recon.pipelines.ptychi_baseline import engines, task
from fly64_recon.pipelines.ptychi_baseline.figures import job_figure
from fly64_recon.pipelines.ptychi_baseline.options import BaselineOptions
from fly64_recon.pipelines.ptychi_baseline.product import job_product, scan_geometry
from fly64_recon.record import (
    JobRecord,
    JobStatus,
    current_worker,
    lost_worker,
    report_epoch,
)
from fly64_recon.science import beam
from fly64_recon.science.convergence import (
    ChangeScale,
    ObjectRule,
    StoppingRule,
    StopReason,
)
from fly64_recon.science.scoring import (
    PHOTON_CHUNK,
    has_ground_truth,
    job_footing,
    photons_per_pattern,
)
from fly64_recon.study import Job

logger = logging.getLogger(__name__)

Rule = StoppingRule | ObjectRule  # what decides when a job has converged


class MissingInputError(FileNotFoundError):
    """A study file is missing and ``ptychi_baseline.strict`` is on."""


class DivergedError(RuntimeError):
    """The reconstruction's loss or result is not finite."""


class TooFewPatternsError(ValueError):
    """A job has fewer patterns than a reconstruction needs."""


# Measured: LSQML from 1 or 2 patterns gives a NaN loss in its first epoch, from 3 on
# it runs (tiny study, batch 16 and 96).
MIN_PATTERNS = 3
FLOOR_PATTERNS = 256  # patterns the shot-noise loss floor is estimated from


@dataclass
class CheckedInput:
    """A job's input after validation, with the job's options: arrays when ``ready``."""

    job: Job
    options: BaselineOptions
    path: str
    status: JobStatus
    reason: str | None = None
    sha256: str | None = None
    arrays: dict[str, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)


def validate_input(
    source: NPZSource, params: Mapping[str, Any], job: Job
) -> CheckedInput:
    """Parse the job's options; open its NPZ once (hash and arrays), check DATA-001."""
    options = BaselineOptions.from_params(params)
    what = source.not_a_file()
    if what is not None:
        reason = f"{source.path} is {what}, not an NPZ file"
        logger.error("%s failed validation: %s", job.namespace, reason)
        return CheckedInput(job, options, source.path, JobStatus.FAILED, reason)
    if not source.exists():
        reason = f"input file not found: {source.path}"
        if options.strict:
            raise MissingInputError(f"{job.namespace}: {reason} (strict: true)")
        logger.warning("%s skipped: %s", job.namespace, reason)
        return CheckedInput(job, options, source.path, JobStatus.SKIPPED, reason)
    try:
        arrays, sha256 = source.load()
        warnings = validate(arrays, source.path)
    except (NPZFormatError, ContractError, OSError) as error:
        logger.error("%s failed validation: %s", job.namespace, error)
        return CheckedInput(job, options, source.path, JobStatus.FAILED, str(error))
    return CheckedInput(
        job, options, source.path, JobStatus.READY, None, sha256, arrays, warnings
    )


def reconstruct(
    checked: CheckedInput, previous: JobArtifacts, geometry: Mapping[str, float]
) -> JobArtifacts:
    """Run the engine on a ready input, unless its outputs match input and options, or
    its worker died running it before (the job fails with how). A reconstruction, made
    or cached, is also written as a ptychodus product in metres (``geometry``: the
    nominal scan geometry, where the input's ``_metadata`` has none)."""
    if checked.status is not JobStatus.READY:
        return JobArtifacts(_record(checked, checked.status).to_dict())
    record = replace(
        _record(checked, JobStatus.PLANNED),
        geometry=scan_geometry(
            read_metadata(checked.arrays),
            geometry,
            checked.arrays["probeGuess"].shape[-1],
        ),
    )
    died = lost_worker()
    if died is not None:
        failed = replace(
            record, status=JobStatus.FAILED, reason=died, finished_at=_now()
        )
        return JobArtifacts(failed.to_dict())
    done = _earlier_success(previous)
    if done is not None and _same_input_and_options(done, record):
        reason = "outputs exist for this input (sha256) and these options"
        cached = replace(
            done,
            input_npz=checked.path,
            status=JobStatus.CACHED,
            reason=reason,
            geometry=record.geometry,
        )
        return JobArtifacts(
            cached.to_dict(), product=job_product(cached, previous.arrays)
        )
    if checked.options.dry_run:
        return JobArtifacts(record.to_dict())
    with _captured_log() as log:
        record, arrays = _run_job(checked, record)
    if arrays is None:
        return JobArtifacts(record.to_dict(), log=log.getvalue())
    written = record.to_dict()
    return JobArtifacts(
        written,
        arrays=arrays,
        log=log.getvalue(),
        provenance=written,
        product=job_product(record, arrays),
    )


def _record(checked: CheckedInput, status: JobStatus) -> JobRecord:
    """The record of a job that has not reconstructed (yet): input and options."""
    options = checked.options
    return JobRecord(
        checked.job,
        status,
        checked.reason,
        input_npz=checked.path,
        input_sha256=checked.sha256,
        engine=options.engine,
        object_init=options.object_init,
        max_patterns=options.max_patterns,
        subsample_seed=options.subsample_seed,
        options_fingerprint=options.fingerprint(devices.device_kind(options.device)),
        probe_modes=options.probe_modes,
        worker=current_worker(),
        warnings=checked.warnings,
    )


def engine_warnings(options: BaselineOptions) -> list[str]:
    """What a reader of a job's record must know about its engine's numbers."""
    engine = options.engine_spec
    if engine.loss_is is None:
        return []
    return [
        f"{engine.name}'s loss is {engine.loss_is}; so no stopping rule: the job "
        "runs its num_epochs and its convergence is not judged (docs/engines.md)"
    ]


def _earlier_success(previous: JobArtifacts) -> JobRecord | None:
    """The record of the reconstruction in the job's folder, if one is there."""
    if previous.arrays is None or not previous.provenance:
        return None
    done = JobRecord.from_dict(previous.provenance)
    return done if done.status is JobStatus.SUCCEEDED else None


def _same_input_and_options(done: JobRecord, record: JobRecord) -> bool:
    return (
        done.input_sha256 == record.input_sha256
        and done.options_fingerprint == record.options_fingerprint
    )


def _run_job(
    checked: CheckedInput, record: JobRecord
) -> tuple[JobRecord, dict[str, np.ndarray] | None]:
    """Reconstruct; the record says how it ended, the arrays are there on success."""
    indices = subsample(len(checked.arrays["diffraction"]), checked.options)
    record = started(checked, record, indices)
    try:
        record, plan = set_up(checked, record, _rows(indices, record.n_patterns_total))
        result, halves = reconstructions(plan, checked, record)
    except Exception as error:  # noqa: BLE001 - any failure is this job's, not the study's
        return failed(checked, record, error), None
    done = succeeded(record, result, plan.rule)
    return done, made(result, checked.arrays, indices, halves, done.engine)


def started(checked: CheckedInput, record: JobRecord, indices: np.ndarray) -> JobRecord:
    """The record of a job that starts: its patterns, halves, start time, warnings."""
    options = checked.options
    for warning in engine_warnings(options):
        logger.warning("%s: %s", checked.job.namespace, warning)
    return replace(
        record,
        n_patterns=len(indices),
        n_patterns_total=len(checked.arrays["diffraction"]),
        half_dataset=options.half_dataset(has_ground_truth(checked.arrays)),
        started_at=_now(),
        warnings=[*record.warnings, *engine_warnings(options)],
    )


def stopping_rule(checked: CheckedInput, rows: np.ndarray | slice) -> Rule | None:
    """The job's convergence rule, for an engine whose loss is a data misfit (else
    none); the object rule measures against the job's lit pixels and photons."""
    options = checked.options
    if options.engine_spec.loss_is is not None:
        return None
    convergence = options.convergence_options()
    if convergence.rule == "loss":
        return convergence.loss_rule()
    footing = job_footing(
        checked.arrays,
        None if isinstance(rows, slice) else rows,
        options.illumination_fraction,
    )
    scale = ChangeScale.of(footing.mask, footing.photons, checked.arrays["probeGuess"])
    return convergence.for_job(scale)


@dataclass(frozen=True)
class Plan:
    """What a job runs: where, with which pty-chi options, on which inputs."""

    device: str
    ptychi_options: Any
    inputs: task.PtychiInputs
    rule: Rule | None


def set_up(
    checked: CheckedInput, record: JobRecord, rows: np.ndarray | slice
) -> tuple[JobRecord, Plan]:
    """The device, pty-chi's options and the inputs; the record with what they are and
    with the scan as the beam saw it."""
    options = checked.options
    if record.n_patterns < MIN_PATTERNS:
        raise TooFewPatternsError(
            f"{record.n_patterns} pattern(s) to reconstruct from; pty-chi needs at "
            f"least {MIN_PATTERNS} (with fewer its first update is NaN)"
        )
    device = task.resolve_device(options.device)
    ptychi_options = options.ptychi_options(device)
    capped(ptychi_options, device, options.convergence_options().gpu_epoch_cap)
    scan = scan_fields(checked, rows)
    floor = loss_floor(checked, rows, ptychi_options)
    inputs, power = engine_inputs(checked, rows, ptychi_options)
    record = replace(
        record,
        device=device,
        **ran_with(ptychi_options),
        **scan,
        warnings=[*record.warnings, *scan_warnings(record.namespace, scan["overlap"])],
        probe_power_rescale=power,
        loss_floor=floor,
    )
    return record, Plan(device, ptychi_options, inputs, stopping_rule(checked, rows))


def capped(ptychi_options: Any, device: str, gpu_epoch_cap: int | None) -> None:
    """On a GPU, the cap is ``gpu_epoch_cap`` (an epoch costs a fraction of the CPU's)."""
    if device.startswith("cuda") and gpu_epoch_cap is not None:
        ptychi_options.reconstructor_options.num_epochs = gpu_epoch_cap


def reconstructions(
    plan: Plan, checked: CheckedInput, record: JobRecord
) -> tuple[task.EngineResult, list[np.ndarray] | None]:
    """The job's reconstruction, and the two from interleaved halves if it makes them."""

    def reconstruct_from(part: task.PtychiInputs) -> task.EngineResult:
        result = task.run_engine(
            part,
            plan.ptychi_options,
            plan.device,
            EpochMonitor(plan.rule, checked.job.namespace, record.num_epochs),
            checked.options.cpu_threads,
        )
        _check_result(result)
        return result

    result = reconstruct_from(plan.inputs)
    if not record.half_dataset:
        return result, None
    return result, [reconstruct_from(h).object for h in interleaved_halves(plan.inputs)]


def failed(checked: CheckedInput, record: JobRecord, error: Exception) -> JobRecord:
    """The record of a job whose run raised: its reason in one line."""
    # The traceback goes to the job's and the run's logs; the console says the job
    # failed, and why, in one line (the record's reason).
    logger.info("%s failed:\n%s", checked.job.namespace, traceback.format_exc())
    reason = failure_reason(error, record)
    return replace(record, status=JobStatus.FAILED, reason=reason, finished_at=_now())


def succeeded(
    record: JobRecord, result: task.EngineResult, rule: Rule | None
) -> JobRecord:
    """The record of a job that reconstructed: where, how long, how it ended, and
    whether it explains its own patterns."""
    final = float(result.loss[-1])
    how_it_ended = ending(rule, result.loss)
    misfits = misfit_warnings(record, final, how_it_ended["converged"])
    return replace(
        record,
        status=JobStatus.SUCCEEDED,
        device=result.device,
        wall_time_s=result.wall_time_s,
        peak_gpu_memory_mb=result.peak_gpu_memory_mb,
        peak_gpu_memory_reserved_mb=result.peak_gpu_memory_reserved_mb,
        warmup_s=result.warmup_s,
        final_loss=final,
        **how_it_ended,
        warnings=[*record.warnings, *misfits],
        finished_at=_now(),
    )


def loss_floor(
    checked: CheckedInput, rows: np.ndarray | slice, ptychi_options: Any
) -> float | None:
    """What the job's loss reaches when it explains its patterns down to their shot
    noise: for LSQML's Gaussian noise model, whose loss that is (else None)."""
    from ptychi.api import NoiseModels  # noqa: PLC0415 - pty-chi costs seconds

    reconstructor = ptychi_options.reconstructor_options
    lsqml = reconstructor.get_reconstructor_type().name == "LSQML"
    if not lsqml or reconstructor.noise_model != NoiseModels.GAUSSIAN:
        return None
    arrays = checked.arrays
    scale = float(read_metadata(arrays).get("intensity_scale", 1.0))
    patterns = arrays["diffraction"][rows]
    # An average over pixels: evenly spaced patterns estimate it at a fraction of
    # a full-scale job's cost (0.02 s instead of 0.37 s, benchmarks/checks.py).
    sampled = patterns[:: max(1, len(patterns) // FLOOR_PATTERNS)]
    return beam.shot_noise_loss(
        np.square(sampled[i : i + PHOTON_CHUNK] * scale)
        for i in range(0, len(sampled), PHOTON_CHUNK)
    )


def misfit_warnings(
    record: JobRecord, final_loss: float, converged: bool | None
) -> list[str]:
    """Words for a reconstruction that does not explain its own patterns: still
    improving when the epoch cap stopped it, or (it had stopped improving) fed data
    that do not belong together. Outcomes, shown on the job's line and in the summary;
    the log has them too."""
    floor = record.loss_floor
    if not floor or final_loss <= beam.MISFIT_FACTOR * floor:
        return []
    why = (
        "it was still improving when the epoch cap stopped it: more epochs?"
        if converged is False
        else "positions that do not belong to the patterns, or a probe that does not?"
    )
    warning = (
        f"does not explain its own patterns: final loss {final_loss:.4g} is "
        f"{final_loss / floor:.1f}x what their shot noise allows ({floor:.4g}); {why}"
    )
    logger.info("%s: %s", record.namespace, warning)
    return [warning]


def made(
    result: task.EngineResult,
    arrays: Mapping[str, np.ndarray],
    indices: np.ndarray,
    halves: list[np.ndarray] | None,
    engine: str,
) -> dict[str, np.ndarray]:
    """The reconstruction's arrays, positions back in the input's frame; ``algorithm``
    (``ptychi_lsqml``) is the label PtychoPINN's ``compare_models.py`` reads
    (``--tike_recon_path``: a name starting with ``ptychi`` is pty-chi, not Tike)."""
    x, y = task.from_ptychi_positions(
        result.position_x_px, result.position_y_px, arrays["objectGuess"].shape
    )
    found = {
        "reconstructed_object": result.object.astype(np.complex64),
        "reconstructed_probe": result.probe.astype(np.complex64),
        "xcoords": x,
        "ycoords": y,
        "pattern_index": indices,
        "loss": result.loss,
        "algorithm": np.array(f"ptychi_{engine.lower()}"),
    }
    if halves is not None:
        found["half_objects"] = np.stack(halves).astype(np.complex64)
    return found


def engine_inputs(
    checked: CheckedInput, rows: np.ndarray | slice, ptychi_options: Any
) -> tuple[task.PtychiInputs, float | None]:
    """The job's patterns and positions, starting object and probe, in pty-chi's
    conventions; the factor the probe's power was scaled by (None: not rescaled)."""
    arrays, options = checked.arrays, checked.options
    inputs = task.to_ptychi_inputs(
        arrays["diffraction"][rows],
        arrays["probeGuess"],
        arrays["objectGuess"],
        arrays["xcoords"][rows],
        arrays["ycoords"][rows],
        read_metadata(arrays).get("intensity_scale", 1.0),
        options.object_init,
        arrays.get("bad_pixels"),
    )
    rescale = not engines.rescales_probe_itself(options.engine_spec, ptychi_options)
    inputs, power = task.starting_probe(inputs, options.probe_modes, rescale)
    if power is not None:
        logger.info(
            "%s: probe power x %.4g to match the patterns (pty-chi's rescale_probe, "
            "before %s)",
            checked.job.namespace,
            power,
            options.engine,
        )
    return inputs, power


def ran_with(ptychi_options: Any) -> dict[str, Any]:
    """The record's fields of what pty-chi ran with, its defaults included (no batch
    size for an engine that updates with every position at once)."""
    ran = ptychi_options.reconstructor_options
    batches = ran.get_reconstructor_type().name not in engines.NO_MINIBATCHES
    return {
        "num_epochs": ran.num_epochs,
        "batch_size": ran.batch_size if batches else None,
        "position_correction": bool(ptychi_options.probe_position_options.optimizable),
    }


def ending(rule: Rule | None, loss: np.ndarray) -> dict[str, Any]:
    """How the run ended: the rule's verdict, or (no rule) the cap and no judgement."""
    if rule is None:
        return {
            "epochs_run": len(loss),
            "stop_rule": None,
            "stop_reason": StopReason.EPOCH_CAP.value,
            "converged": None,
            "object_change": None,
            "plateau_epoch": None,
        }
    verdict = rule.final(loss)
    return {
        "epochs_run": verdict.epochs_run,
        "stop_rule": rule.name,
        "stop_reason": verdict.stop_reason.value,
        "converged": verdict.converged,
        "object_change": verdict.object_change,
        "plateau_epoch": rule.plateau_epoch(loss),
    }


@dataclass(frozen=True)
class EpochMonitor:
    """After each epoch: a non-finite loss fails the job, the epoch goes to the study's
    console, and the stopping rule, if there is one, may end the job."""

    rule: Rule | None
    namespace: str
    num_epochs: int

    def __call__(
        self, loss: np.ndarray, current_object: Callable[[], np.ndarray] | None = None
    ) -> bool:
        _check_finite(len(loss) - 1, float(loss[-1]))
        report_epoch(self.namespace, len(loss), self.num_epochs, float(loss[-1]))
        return self.rule is not None and self.rule.should_stop(loss, current_object)


def scan_fields(checked: CheckedInput, rows: np.ndarray | slice) -> dict[str, Any]:
    """The record's fields of the job's scan as the beam saw it: probe diameter,
    measured overlap, photons per pattern and per unit area."""
    arrays = checked.arrays
    scale = float(read_metadata(arrays).get("intensity_scale", 1.0))
    photons = photons_per_pattern(arrays["diffraction"][rows], scale)
    scan = beam.describe_scan(
        arrays["probeGuess"],
        arrays["xcoords"][rows],
        arrays["ycoords"][rows],
        arrays["objectGuess"].shape,
        photons,
        checked.options.illumination_fraction,
    )
    return {
        "probe_diameter_px": scan["probe_diameter_px"],
        "overlap": scan["overlap"],
        "photons_per_pattern": photons,
        "photons_per_px2": scan["photons_per_px2"],
    }


def scan_warnings(namespace: str, overlap: float) -> list[str]:
    """A warning when the scan's footprints do not overlap, logged and returned."""
    warning = beam.overlap_warning(overlap)
    if not warning:
        return []
    logger.warning("%s: %s", namespace, warning)
    return [warning]


def interleaved_halves(inputs: task.PtychiInputs) -> list[task.PtychiInputs]:
    """The even and the odd patterns, each a reconstruction's input of its own."""
    return [
        replace(
            inputs,
            intensities=np.ascontiguousarray(inputs.intensities[start::2]),
            position_x_px=inputs.position_x_px[start::2],
            position_y_px=inputs.position_y_px[start::2],
        )
        for start in (0, 1)
    ]


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


def _check_result(result: task.EngineResult) -> None:
    for name in ("object", "probe"):
        if not np.isfinite(getattr(result, name)).all():
            raise DivergedError(f"reconstruction diverged: the {name} has NaN or Inf")


def failure_reason(error: BaseException, record: JobRecord) -> str:
    """One line a scientist can act on."""
    import torch  # noqa: PLC0415 - torch costs seconds; every kedro command imports this

    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error):
        key = (record.engine or "LSQML").lower()
        return (
            f"out of memory on the GPU: {error}. Run fewer jobs per GPU "
            "(--runner-params workers_per_gpu=N), keep the patterns in host memory "
            f"(ptychi_baseline.{key}.data_options.save_data_on_device: false), reduce "
            f"ptychi_baseline.{key}.reconstructor_options.batch_size (now "
            f"{record.batch_size}) or set max_patterns"
        )
    if isinstance(error, DivergedError | TooFewPatternsError):
        return str(error)
    if devices.note_if_lost(error):
        return (
            f"{type(error).__name__}: {error} (a CUDA error that leaves the process's "
            "GPU unusable: the runner replaces its worker before the next job)"
        )
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(artifacts: JobArtifacts) -> tuple[Figure, JobRecord]:
    """The job's summary figure and its record for the manifest, from what is on disk."""
    job_record = JobRecord.from_dict(artifacts.record)
    return job_figure(job_record, artifacts.arrays), job_record
