"""Nodes of the comparison: one job's models beside its pty-chi baseline, then the study.

Every reconstruction of a job (the baseline, named ``ptychi``, and each declared model)
is scored by ``metrics.compare`` on the job's illumination mask (``fly64_recon.science.scoring``,
as the evaluation scores the baseline), beside the flat-object null reference on the
same mask and the shot-noise floor. A model's problem is that model's row: ``missing``
(no file), ``failed`` (the file breaks the input rules, with the file and key), or
``not_scored`` (the job has no ground truth to score against). Nothing here raises for
one job or one model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fly64_recon.datasets.job_folder import RECONSTRUCTION_FILE, JobArtifacts
from fly64_recon.datasets.npz import NPZFormatError, NPZSource
from fly64_recon.pipelines.comparison.models import (
    BASELINE,
    ModelFileError,
    model_on_grid,
)
from fly64_recon.record import JobRecord, job_fields
from fly64_recon.science import metrics as m
from fly64_recon.science.scoring import (
    TRUTH_MEMBERS,
    Footing,
    has_ground_truth,
    job_footing,
)
from fly64_recon.study import Job, dose_label

logger = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "dose",
    "view",
    "split",
    "model",
    "metric",
    "amplitude",
    "phase",
    "null_amplitude",
    "null_phase",
    "phase_noise_floor",
    "coverage",
    "status",
    "reason",
]


REPORT_COLUMNS = (
    ("phase", "mae", "phase MAE (rad)", "{:.4f}"),
    ("phase", "ssim", "phase SSIM", "{:.3f}"),
    ("phase", "frc_0.5", "phase FRC 0.5", "{:.2f}"),
    ("amplitude", "mae", "amplitude MAE", "{:.4f}"),
)


class NoGroundTruth(ValueError):
    """The job's input has no ground truth to score against."""


def explain_no_models(params: Mapping[str, Any]) -> None:
    """Say that there is nothing to compare, and how to declare a model."""
    logger.warning(
        "no model to compare (comparison.models is %s): declare one in "
        "comparison_models (conf/base/globals.yml or an environment's globals.yml), "
        "e.g. pinn: /data/pinn/dose_{dose}/{view}/{split}.npz; see the README",
        dict(params.get("models") or {}),
    )


def open_model(source: NPZSource) -> tuple[dict[str, np.ndarray] | None, dict]:
    """A model file's arrays and its entry, or None and why not."""
    entry = {"path": source.path}
    if not source.exists():
        return None, {
            **entry,
            "status": "missing",
            "reason": f"no file at {source.path}",
        }
    try:
        arrays, sha256 = source.load()
    except (NPZFormatError, OSError) as error:
        return None, {**entry, "status": "failed", "reason": str(error)}
    return arrays, {**entry, "sha256": sha256}


def open_baseline(
    artifacts: JobArtifacts, job: Job
) -> tuple[dict[str, np.ndarray] | None, dict]:
    """The job's pty-chi reconstruction and its entry, or None and why not."""
    entry = {"path": f"{job.output_relpath}/{RECONSTRUCTION_FILE}"}
    record = JobRecord.from_dict(artifacts.record) if artifacts.record else None
    made = record is not None and record.status.has_reconstruction
    if made and artifacts.arrays is not None:
        return artifacts.arrays, entry
    if record is None:
        reason = "no job record on disk: the baseline job has not run"
    elif made:
        reason = f"job {record.status}, but its reconstruction file is missing"
    else:
        reason = f"job {record.status}: {record.reason}"
    return None, {**entry, "status": "missing", "reason": reason}


def compare(
    artifacts: JobArtifacts,
    source: NPZSource,
    params: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    *models: NPZSource,
    job: Job,
    names: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the baseline and every model of the job; their aligned images for a figure."""
    opened = {BASELINE: open_baseline(artifacts, job)}
    opened.update(
        (name, open_model(model)) for name, model in zip(names, models, strict=True)
    )
    try:
        truth, footing = job_truth(source, artifacts, params, evaluation)
    except NoGroundTruth as error:
        return _not_scored(job, opened, str(error)), {}
    except Exception as error:  # noqa: BLE001 - one job's comparison, not the study's
        logger.exception("%s: the ground truth cannot be read", job.namespace)
        why = f"the ground truth cannot be read: {type(error).__name__}: {error}"
        return _not_scored(job, opened, why), {}
    bounds = Bounds(
        evaluation["upsample_factor"],
        evaluation["max_shift_px"],
        evaluation["max_phase_ramp_rad_per_px"],
    )
    entries, aligned = [], {}
    for name, (arrays, entry) in opened.items():
        found, aligned[name] = (
            (entry, None)
            if arrays is None
            else score(arrays, entry, truth, footing, bounds)
        )
        entries.append({"model": name, **found})
    _warn(job, entries)
    result = {
        **job_fields(job),
        "ground_truth": True,
        "lit_px": int(footing.mask.sum()),
        "photons_per_pattern": footing.photons_per_pattern,
        "noise_floor": footing.noise_floor(),
        "models": entries,
    }
    return result, figure_images(truth, footing.mask, aligned)


def job_truth(
    source: NPZSource,
    artifacts: JobArtifacts,
    params: Mapping[str, Any],
    evaluation: Mapping[str, Any],
) -> tuple[np.ndarray, Footing]:
    """The ground truth and the footing of the patterns the baseline used (else all)."""
    members = source.load_members(TRUTH_MEMBERS)
    if not has_ground_truth(members):
        raise NoGroundTruth(
            "the input has no ground truth (a flat objectGuess, or _metadata says so)"
        )
    used = None if artifacts.arrays is None else artifacts.arrays.get("pattern_index")
    footing = job_footing(members, used, params["illumination_fraction"])
    return members["objectGuess"], footing


def _not_scored(job: Job, opened: Mapping[str, tuple], reason: str) -> dict[str, Any]:
    """The job's entries when there is nothing to score against."""
    entries = [
        {"model": name, **entry}
        if arrays is None
        else {"model": name, **entry, "status": "not_scored", "reason": reason}
        for name, (arrays, entry) in opened.items()
    ]
    _warn(job, entries)
    return {
        **job_fields(job),
        "ground_truth": False,
        "reason": reason,
        "models": entries,
    }


def _warn(job: Job, entries: Sequence[Mapping[str, Any]]) -> None:
    """One log line per reconstruction of the job that was not scored."""
    for entry in entries:
        if entry["status"] != "scored":
            logger.warning(
                "%s: %s %s: %s",
                job.namespace,
                entry["model"],
                entry["status"],
                entry["reason"],
            )


@dataclass(frozen=True)
class Bounds:
    """How finely to register, and the alignment beyond which a score is doubtful."""

    upsample_factor: int
    max_shift_px: float
    max_phase_ramp_rad_per_px: float


def score(
    arrays: Mapping[str, np.ndarray],
    entry: Mapping[str, Any],
    truth: np.ndarray,
    footing: Footing,
    bounds: Bounds,
) -> tuple[dict[str, Any], tuple[np.ndarray, tuple[int, ...]] | None]:
    """One reconstruction's entry, scored on the job's footing; its aligned region."""
    path = entry["path"]
    try:
        image, scored = model_on_grid(arrays, path, footing.mask)
        result = m.compare(image, truth, scored, bounds.upsample_factor)
    except ModelFileError as error:
        return {**entry, "status": "failed", "reason": str(error)}, None
    except Exception as error:  # noqa: BLE001 - one model's scores, not the study's
        logger.exception("%s: scoring failed", path)
        reason = f"{path}: scoring failed: {type(error).__name__}: {error}"
        return {**entry, "status": "failed", "reason": reason}, None
    alignment = m.Alignment.from_dict(result["alignment"])
    flags = alignment.excess(bounds.max_shift_px, bounds.max_phase_ramp_rad_per_px)
    worse = m.not_below_null(result)
    if worse:
        flags.append(worse)
    scores = {
        **entry,
        "status": "scored",
        "reason": None,
        "coverage": float(scored.sum() / footing.mask.sum()),
        "noise_floor": footing.noise_floor(scored),
        "flags": flags,
        **result,
    }
    return scores, (m.apply_alignment(image, alignment), alignment.region)


def figure_images(
    truth: np.ndarray,
    mask: np.ndarray,
    aligned: Mapping[str, tuple[np.ndarray, tuple[int, ...]] | None],
) -> dict[str, Any]:
    """Truth, mask and every aligned reconstruction on the job's region (NaN: none)."""
    try:
        region = m.mask_region(mask)
    except ValueError:
        return {}
    y0, _, x0, _ = region
    models = {}
    for name, found in aligned.items():
        if found is None:
            continue
        image, (my0, my1, mx0, mx1) = found
        placed = np.full(m.crop(mask, region).shape, np.nan, dtype=np.complex128)
        placed[my0 - y0 : my1 - y0, mx0 - x0 : mx1 - x0] = image
        models[name] = placed
    return {"truth": m.crop(truth, region), "mask": m.crop(mask, region), **models}


def collect_comparisons(*found: dict[str, Any], jobs: Sequence[Job]) -> list[dict]:
    """Every job's comparison in design order; a job without one on disk says so."""
    return [
        document
        or {
            **job_fields(job),
            "ground_truth": False,
            "reason": "no comparison.json on disk: the comparison has not run",
            "models": [],
        }
        for job, document in zip(jobs, found, strict=True)
    ]


def comparison_table(comparisons: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Tidy: a row per job, model and metric (one row with the reason when not scored)."""
    rows = [
        row
        for job in comparisons
        for entry in job["models"]
        for row in _rows(job, entry)
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _rows(job: Mapping[str, Any], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    head = {
        "dose": job["dose"],
        "view": job["view"],
        "split": job["split"],
        "model": entry["model"],
    }
    if entry["status"] != "scored":
        return [{**head, "status": entry["status"], "reason": entry["reason"]}]
    return [
        {
            **head,
            "metric": metric,
            "amplitude": entry["amplitude"][metric],
            "phase": entry["phase"][metric],
            "null_amplitude": entry["null"]["amplitude"][metric],
            "null_phase": entry["null"]["phase"][metric],
            "phase_noise_floor": entry["noise_floor"].get(metric),
            "coverage": entry["coverage"],
            "status": "scored",
            "reason": "",
        }
        for metric in entry["phase"]
    ]


def comparison_report(comparisons: Sequence[dict[str, Any]]) -> str:
    """Markdown: each model against the pty-chi baseline per dose, view and split."""
    names = sorted(
        {e["model"] for job in comparisons for e in job["models"]} - {BASELINE}
    )
    rows = [
        _report_row(job, entry, _entry(job, BASELINE))
        for job in comparisons
        for entry in job["models"]
        if entry["model"] != BASELINE and entry["status"] == "scored"
    ]
    unscored = [
        f"- dose {dose_label(job['dose'])}, {job['view']}, {job['split']}, "
        f"`{entry['model']}`: {entry['status']}: {entry['reason']}"
        for job in comparisons
        for entry in job["models"]
        if entry["status"] != "scored"
    ]
    lines = [
        "# Other reconstructions against the pty-chi baseline",
        "",
        f"{len(comparisons)} jobs; models: "
        + (", ".join(f"`{name}`" for name in names) or "none declared")
        + f"; baseline: pty-chi LSQML (`{BASELINE}`).",
        "",
    ]
    if rows:
        lines += ["## Model against pty-chi", "", *_markdown_table(rows), ""]
    flagged = [
        f"- dose {dose_label(job['dose'])}, {job['view']}, {job['split']}, "
        f"`{entry['model']}`: {flag}."
        for job in comparisons
        for entry in job["models"]
        for flag in entry.get("flags", [])
    ]
    if flagged:
        lines += ["## Flags", "", *flagged, ""]
    if unscored:
        lines += ["## Not scored", "", *unscored, ""]
    lines += [
        "Every reconstruction of a job is scored by the same code on the same lit "
        "pixels (the job's illumination mask): subpixel registration, removal of the "
        "global phase and linear phase ramp, amplitude scaling, then MAE, MSE, PSNR, "
        "SSIM, MS-SSIM and the FRC 0.5 crossing (fraction of Nyquist). *pty-chi* is "
        "the baseline's score, *flat object* the phase MAE of no reconstruction at "
        "all, *noise floor* the shot-noise limit of the phase error, 1 / (2 sqrt(n)) "
        "for n photons per lit pixel. The verdict compares phase MAE. Every number: "
        "`comparison_metrics.csv`; per job: `comparison.json` and `comparison.png`.",
        "",
    ]
    return "\n".join(lines)


def _entry(job: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The job's scored entry of ``name``, if any."""
    return next(
        (e for e in job["models"] if e["model"] == name and e["status"] == "scored"),
        None,
    )


def _report_row(
    job: Mapping[str, Any], entry: Mapping[str, Any], base: Mapping | None
) -> list[str]:
    cells = [dose_label(job["dose"]), job["view"], job["split"], f"`{entry['model']}`"]
    for part, metric, _, fmt in REPORT_COLUMNS:
        cells.append(fmt.format(entry[part][metric]))
        cells.append("-" if base is None else fmt.format(base[part][metric]))
    cells.append(f"{entry['null']['phase']['mae']:.4f}")
    cells.append(f"{entry['noise_floor']['mae']:.4f}")
    cells.append(verdict(entry, base))
    return cells


def verdict(entry: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    """Which is better on phase MAE, by how much, and against the flat object."""
    mae = entry["phase"]["mae"]
    words = []
    if base is None:
        words.append("no pty-chi score to compare")
    else:
        ratio = mae / base["phase"]["mae"] if base["phase"]["mae"] > 0 else np.inf
        better = "better" if ratio < 1 else "worse" if ratio > 1 else "equal"
        words.append(f"{better}: {ratio:.2f}x pty-chi's phase MAE")
    if mae >= entry["null"]["phase"]["mae"]:
        words.append("not below the flat object")
    if entry["coverage"] < 1:
        words.append(f"scored on {entry['coverage']:.0%} of the lit pixels")
    return "; ".join(words)


def _markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    header = ["dose", "view", "split", "model"]
    for _, _, label, _ in REPORT_COLUMNS:
        header += [label, "pty-chi"]
    header += ["flat object phase MAE", "noise floor (rad)", "verdict"]
    align = ["---"] * 4 + ["---:"] * (len(header) - 5) + ["---"]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
