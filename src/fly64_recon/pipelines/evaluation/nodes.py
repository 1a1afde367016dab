"""Nodes of the evaluation: one job's metrics (in its namespace), then the study summary.

Like a reconstruction job, an evaluation never raises for a problem of its own job: a
job that did not succeed, or whose evaluation fails, gets ``evaluated: false`` and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from fly64_recon.contract import read_metadata
from fly64_recon.datasets.job_folder import JobArtifacts
from fly64_recon.datasets.npz import NPZSource
from fly64_recon.pipelines.evaluation import metrics as m
from fly64_recon.record import JobRecord, job_fields
from fly64_recon.study import Job, dose_label

logger = logging.getLogger(__name__)

GROUND_TRUTH_MEMBERS = ("objectGuess", "_metadata")
TABLE_COLUMNS = ["dose", "view", "split", "metric", "amplitude", "phase"]
# In metrics.json but not in the manifest entry, which has the job's own fields already.
NOT_HEADLINE = (
    "namespace",
    "dose",
    "view",
    "split",
    "status",
    "frc_curves",
    "alignment",
)


def evaluate(
    artifacts: JobArtifacts, source: NPZSource, params: Mapping[str, Any], job: Job
) -> dict[str, Any]:
    """The job's metrics: against the ground truth when its input has one."""
    record = JobRecord.from_dict(artifacts.record) if artifacts.record else None
    head = {**job_fields(job), "status": record.status if record else None}
    made = record is not None and record.status.has_reconstruction
    if not made or artifacts.arrays is None:
        return {**head, "evaluated": False, "reason": _why_not(record)}
    try:
        truth = source.load_members(GROUND_TRUTH_MEMBERS)
        return {**head, "evaluated": True, **measure(artifacts.arrays, truth, params)}
    except Exception as error:  # noqa: BLE001 - one job's evaluation, not the study's
        logger.exception("%s: evaluation failed", job.namespace)
        reason = f"evaluation failed: {type(error).__name__}: {error}"
        return {**head, "evaluated": False, "reason": reason}


def _why_not(record: JobRecord | None) -> str:
    """Why a job's folder holds nothing to evaluate."""
    if record is None:
        return "no job record on disk: the job has not run"
    if record.status.has_reconstruction:
        return f"job {record.status}, but its reconstruction file is missing"
    return f"job {record.status}: {record.reason}"


def measure(
    arrays: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Data fit always; alignment, amplitude and phase metrics given a ground truth."""
    reconstruction = arrays["reconstructed_object"]
    target = truth["objectGuess"]
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction {reconstruction.shape} and objectGuess {target.shape} "
            "are not on the same grid"
        )
    patch_size = arrays["reconstructed_probe"].shape[-1]
    region = m.scanned_region(
        arrays["xcoords"],
        arrays["ycoords"],
        patch_size,
        target.shape,
        params["crop_margin"] * patch_size,
    )
    fit = {
        "n_patterns": len(arrays["pattern_index"]),
        "data_fit": m.data_fit(arrays["loss"]),
    }
    if not has_ground_truth(truth, params["flat_tolerance"]):
        return {"ground_truth": False, "region": list(region), **fit}
    compared = m.compare(reconstruction, target, region, params["upsample_factor"])
    return {"ground_truth": True, "region": list(region), **compared, **fit}


def has_ground_truth(members: Mapping[str, np.ndarray], tolerance: float) -> bool:
    """False for measured data: ``_metadata`` says so, or objectGuess is flat."""
    flagged = read_metadata(members).get("ground_truth", True) is False
    return not flagged and not m.is_flat(members["objectGuess"], tolerance)


def manifest_section(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline of a job's metrics (no curves, no alignment) for its manifest entry."""
    headline = {k: v for k, v in metrics.items() if k not in NOT_HEADLINE}
    if "data_fit" in headline:
        headline["data_fit"] = {
            k: v for k, v in headline["data_fit"].items() if k != "loss"
        }
    if "alignment" in metrics:
        headline["shift_px"] = metrics["alignment"]["shift_px"]
    return headline


def report_metrics(metrics: dict[str, Any], entry: dict[str, Any]) -> JobRecord:
    """The job's record, from its manifest entry, with the headline of its metrics."""
    return replace(JobRecord.from_dict(entry), metrics=manifest_section(metrics))


def collect_metrics(*metrics: dict[str, Any], jobs: Sequence[Job]) -> list[dict]:
    """Every job's metrics in design order; a job without ``metrics.json`` says so."""
    missing = {"status": None, "evaluated": False, "reason": "no metrics.json on disk"}
    return [
        found or {**job_fields(job), **missing}
        for job, found in zip(jobs, metrics, strict=True)
    ]


def metrics_table(all_metrics: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Tidy: one row per job and ground-truth metric, amplitude and phase side by side."""
    rows = [
        {
            "dose": job["dose"],
            "view": job["view"],
            "split": job["split"],
            "metric": name,
            "amplitude": job["amplitude"][name],
            "phase": job["phase"][name],
        }
        for job in all_metrics
        if job.get("ground_truth")
        for name in job["phase"]
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
        shown = job.split == params["grid_split"] and metrics.get("evaluated")
        if not shown or found.arrays is None:
            continue
        image = found.arrays["reconstructed_object"]
        if "alignment" in metrics:
            alignment = m.Alignment.from_dict(metrics["alignment"])
            phases[job.namespace] = np.angle(m.apply_alignment(image, alignment))
        else:
            phases[job.namespace] = np.angle(m.crop(image, metrics["region"]))
    return phases


def summary_report(all_metrics: Sequence[dict[str, Any]]) -> str:
    """The study's results as Markdown: per-job table, science check, what is missing."""
    measured = [job for job in all_metrics if job.get("ground_truth")]
    fit_only = [
        job
        for job in all_metrics
        if job.get("evaluated") and not job.get("ground_truth")
    ]
    missing = [job for job in all_metrics if not job.get("evaluated")]
    lines = [
        "# LSQML baseline: study summary",
        "",
        f"{len(all_metrics)} jobs: {len(measured)} measured against the ground truth, "
        f"{len(fit_only)} on data fit only (no ground truth), {len(missing)} not "
        "evaluated.",
        "",
    ]
    if measured:
        lines += ["## Against the ground truth", "", *_measured_table(measured), ""]
        lines += ["## Science check", "", *science_check(measured), ""]
    if fit_only:
        lines += ["## Data fit only (no ground truth)", "", *_fit_table(fit_only), ""]
    if missing:
        lines += ["## Not evaluated", ""]
        lines += [f"- `{job['namespace']}`: {job['reason']}" for job in missing]
        lines += [""]
    lines += [
        "Phase and amplitude are compared over the scanned region after subpixel "
        "registration, removal of the global phase and linear phase ramp, and "
        "amplitude scaling. SSIM uses a Gaussian window (sigma 1.5); MS-SSIM is the "
        "weighted product of SSIM over five dyadic scales. FRC columns give where the "
        "Fourier ring correlation with the ground truth falls below the threshold, "
        "as a fraction of Nyquist (1.0: never). Per-job details: `metrics.json` in "
        "each job folder; every number: `metrics.csv`.",
        "",
    ]
    return "\n".join(lines)


MEASURED_COLUMNS = (
    ("phase", "mae", "phase MAE (rad)", "{:.4f}"),
    ("phase", "ssim", "phase SSIM", "{:.3f}"),
    ("phase", "ms_ssim", "phase MS-SSIM", "{:.3f}"),
    ("phase", "frc_0.5", "phase FRC 0.5", "{:.2f}"),
    ("phase", "frc_1/7", "phase FRC 1/7", "{:.2f}"),
    ("amplitude", "mae", "amplitude MAE", "{:.4f}"),
    ("amplitude", "ssim", "amplitude SSIM", "{:.3f}"),
)


def _measured_table(jobs: Sequence[dict[str, Any]]) -> list[str]:
    header = ["dose", "view", "split", *(c[2] for c in MEASURED_COLUMNS), "final loss"]
    rows = [
        [
            dose_label(job["dose"]),
            job["view"],
            job["split"],
            *(fmt.format(job[part][key]) for part, key, _, fmt in MEASURED_COLUMNS),
            f"{job['data_fit']['final_loss']:.4g}",
        ]
        for job in jobs
    ]
    return _markdown_table(header, rows)


def _fit_table(jobs: Sequence[dict[str, Any]]) -> list[str]:
    header = ["dose", "view", "split", "patterns", "epochs", "final loss"]
    rows = [
        [
            dose_label(job["dose"]),
            job["view"],
            job["split"],
            str(job["n_patterns"]),
            str(job["data_fit"]["epochs"]),
            f"{job['data_fit']['final_loss']:.4g}",
        ]
        for job in jobs
    ]
    return _markdown_table(header, rows)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    numeric = ["---:" if i >= 3 else "---" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(numeric) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def science_check(measured: Sequence[dict[str, Any]]) -> list[str]:
    """Whether the baseline view's phase MAE falls from the lowest to the highest dose."""
    lines = []
    for split in sorted({job["split"] for job in measured}):
        baseline = sorted(
            (job["dose"], job["phase"]["mae"])
            for job in measured
            if job["view"] == "baseline" and job["split"] == split
        )
        if len(baseline) < 2:
            continue
        (low, low_mae), (high, high_mae) = baseline[0], baseline[-1]
        verdict = "falls" if high_mae < low_mae else "does NOT fall"
        lines.append(
            f"- baseline view, {split} split: phase MAE {verdict} from "
            f"{low_mae:.4f} rad at dose {dose_label(low)} to {high_mae:.4f} rad at "
            f"dose {dose_label(high)}."
        )
    return lines or ["- fewer than two doses of the baseline view were measured."]
