"""Nodes of the evaluation: one job's metrics (in its namespace), then the study summary.

The evaluation scores the job's pty-chi reconstruction with the scoring layer
(``fly64_recon.science.scoring``: on the job's lit pixels, beside a flat object and the
shot-noise floor) and adds what only the baseline has: its data fit and convergence,
the half-dataset FRC, its positions. Like a reconstruction job, it never raises for a
problem of its own job: the score says ``missing`` or ``failed`` and why. What makes a
score doubtful (not below the null, a spurious alignment, a reconstruction stopped
while still improving, no overlap) is a flag, in words.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from fly64_recon.contract import TRUE_POSITION_KEYS
from fly64_recon.datasets.job_folder import JobArtifacts
from fly64_recon.datasets.npz import NPZSource
from fly64_recon.record import JobRecord, ScoreStatus, job_fields
from fly64_recon.science import metrics as m
from fly64_recon.science.convergence import StopReason
from fly64_recon.science.scoring import (
    SCORE_COLUMNS,
    TRUTH_MEMBERS,
    Bounds,
    Footing,
    has_ground_truth,
    job_footing,
    score,
    score_rows,
    unscored,
    why_no_reconstruction,
)
from fly64_recon.study import Job

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ["dose", "view", "split", *SCORE_COLUMNS]
# In metrics.json but not in the manifest entry, which has the job's own fields already.
NOT_HEADLINE = (
    "engine",
    "namespace",
    "dose",
    "view",
    "split",
    "job_status",
    "frc_curves",
    "alignment",
)
NO_GROUND_TRUTH = "no ground truth: the data fit and the half-dataset FRC only"


def evaluate(
    artifacts: JobArtifacts, source: NPZSource, params: Mapping[str, Any], job: Job
) -> dict[str, Any]:
    """The job's metrics (``params``: the scoring parameters); scored against the
    ground truth when its input has one."""
    record = JobRecord.from_dict(artifacts.record) if artifacts.record else None
    head = {**job_fields(job), "job_status": record.status.value if record else None}
    missing = why_no_reconstruction(record, artifacts.arrays is not None)
    if missing is not None:
        return {**head, **unscored(ScoreStatus.MISSING, missing)}
    try:
        members = source.load_members(TRUTH_MEMBERS)
        measured = measure(artifacts.arrays, members, record, params)
    except Exception as error:  # noqa: BLE001 - one job's evaluation, not the study's
        logger.exception("%s: evaluation failed", job.namespace)
        reason = f"evaluation failed: {type(error).__name__}: {error}"
        return {**head, **unscored(ScoreStatus.FAILED, reason)}
    # An outcome, not a fault: the closing summary and study_summary.md list the flags.
    for flag in measured["flags"]:
        logger.info("%s: %s", job.namespace, flag)
    return {**head, **measured}


def measure(
    arrays: Mapping[str, np.ndarray],
    members: Mapping[str, np.ndarray],
    record: JobRecord,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Data fit always; the score given a ground truth; the job's flags."""
    reconstruction, target = arrays["reconstructed_object"], members["objectGuess"]
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction {reconstruction.shape} and objectGuess {target.shape} "
            "are not on the same grid"
        )
    footing = job_footing(
        members, arrays["pattern_index"], params["illumination_fraction"]
    )
    region = m.mask_region(footing.mask)
    bounds = Bounds.from_params(params)
    found: dict[str, Any] = {
        "engine": record.engine,
        "ground_truth": has_ground_truth(members),
        "region": list(region),
        "scan": scan_summary(footing, region, record, params),
        "n_patterns": len(arrays["pattern_index"]),
        "data_fit": m.data_fit(arrays["loss"]),
        "convergence": {
            "epochs_run": record.epochs_run,
            "stop_rule": record.stop_rule,
            "stop_reason": record.stop_reason,
            "converged": record.converged,
            "object_change": record.object_change,
            "plateau_epoch": record.plateau_epoch,
        },
    }
    if "half_objects" in arrays:
        first, second = arrays["half_objects"]
        found["half_dataset_frc"] = m.half_dataset_frc(
            first, second, footing.mask, bounds.upsample_factor
        )
    if found["ground_truth"]:
        found |= score(reconstruction, target, footing, bounds)
    else:
        found |= unscored(ScoreStatus.NOT_SCORED, NO_GROUND_TRUTH)
    if all(key in members for key in TRUE_POSITION_KEYS):
        found["positions"] = positions(arrays, members, record)
    found["flags"] = [*found.get("flags", []), *job_flags(record)]
    return found


def positions(
    arrays: Mapping[str, np.ndarray],
    members: Mapping[str, np.ndarray],
    record: JobRecord,
) -> dict[str, Any]:
    """The positions' RMS error against the true ones, as recorded and as the job
    left them (refined when it corrected them), each after removing a common shift."""
    rows = arrays["pattern_index"]
    return {
        "position_correction": record.position_correction,
        **m.position_errors(
            (members["xcoords"][rows], members["ycoords"][rows]),
            (arrays["xcoords"], arrays["ycoords"]),
            (members["xcoords_true"][rows], members["ycoords_true"][rows]),
        ),
    }


def scan_summary(
    footing: Footing,
    region: Sequence[int],
    record: JobRecord,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Where the beam was: the lit pixels, the photons they got, the scan's overlap."""
    lit = int(footing.mask.sum())
    return {
        "illumination_fraction": params["illumination_fraction"],
        "lit_px": lit,
        "lit_fraction_of_region": lit / float(m.crop(footing.mask, region).size),
        "photons_per_pattern": footing.photons_per_pattern,
        "photons_per_px2": float(footing.photons[footing.mask].mean()),
        "overlap": record.overlap,
        "probe_diameter_px": record.probe_diameter_px,
    }


def job_flags(record: JobRecord) -> list[str]:
    """What the job itself makes doubtful, beside its score's flags, in words: its
    record's warnings (the input's, no overlap, a fit that does not explain the
    patterns, an engine's loss that is no data misfit) and not converging."""
    words = list(record.warnings)
    if record.converged is False:
        words.append(not_converged(record))
    return words


def not_converged(record: JobRecord) -> str:
    """Why a job's reconstruction did not converge, in words."""
    if record.stop_reason == StopReason.RISING.value:
        return (
            f"not converged: the loss was rising when the job stopped after "
            f"{record.epochs_run} epochs"
        )
    key = (record.engine or "LSQML").lower()
    still = "the loss was still improving"
    if record.stop_rule == "object":
        still = (
            f"the object still changed by {record.object_change['low']:.2g} noise "
            "floors (ptychi_baseline.convergence.settled)"
            if record.object_change
            else "before the object rule's first measurement (its span, 5 epochs later)"
        )
    return (
        f"not converged: stopped by the epoch cap ({record.epochs_run} epochs) while "
        f"{still}; raise ptychi_baseline.{key}.reconstructor_options.num_epochs"
    )


def manifest_section(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline of a job's metrics (no curves, no alignment) for its manifest entry."""
    headline = {k: v for k, v in metrics.items() if k not in NOT_HEADLINE}
    if "data_fit" in headline:
        headline["data_fit"] = {
            k: v for k, v in headline["data_fit"].items() if k != "loss"
        }
    if "half_dataset_frc" in headline:
        headline["half_dataset_frc"] = {
            k: v
            for k, v in headline["half_dataset_frc"].items()
            if k not in ("frequency_cycles_per_px", "curve")
        }
    if "alignment" in metrics:
        headline["shift_px"] = metrics["alignment"]["shift_px"]
        headline["phase_ramp_rad_per_px"] = metrics["alignment"][
            "phase_ramp_rad_per_px"
        ]
    return headline


def report_metrics(metrics: dict[str, Any], entry: dict[str, Any]) -> JobRecord:
    """The job's record, from its manifest entry, with the headline of its metrics."""
    return replace(JobRecord.from_dict(entry), metrics=manifest_section(metrics))


def collect_metrics(*metrics: dict[str, Any], jobs: Sequence[Job]) -> list[dict]:
    """Every job's metrics in design order; a job without ``metrics.json`` says so."""
    missing = {
        "job_status": None,
        **unscored(ScoreStatus.MISSING, "no metrics.json on disk"),
    }
    return [
        found or {**job_fields(job), **missing}
        for job, found in zip(jobs, metrics, strict=True)
    ]


def metrics_table(all_metrics: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Tidy: a row per scored job and metric, beside the null and the noise floor."""
    rows = [
        {"dose": job["dose"], "view": job["view"], "split": job["split"], **row}
        for job in all_metrics
        for row in score_rows(job)
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def aligned_phases(
    all_metrics: Sequence[dict[str, Any]],
    params: Mapping[str, Any],
    *artifacts: JobArtifacts,
    jobs: Sequence[Job],
) -> dict[str, np.ndarray]:
    """The phase of each reconstruction of the grid's split, aligned as it was measured."""
    phases = {}
    for job, metrics, found in zip(jobs, all_metrics, artifacts, strict=True):
        shown = job.split == params["grid_split"] and "region" in metrics
        if not shown or found.arrays is None:
            continue
        image = found.arrays["reconstructed_object"]
        if "alignment" in metrics:
            alignment = m.Alignment.from_dict(metrics["alignment"])
            phases[job.namespace] = np.angle(m.apply_alignment(image, alignment))
        else:
            phases[job.namespace] = np.angle(m.crop(image, metrics["region"]))
    return phases
