"""Nodes of the comparison: one job's models beside its pty-chi baseline, then the study.

Every declared model of a job is scored by the scoring layer
(``fly64_recon.science.scoring``) on the job's lit pixels, as the evaluation scores the
pty-chi reconstruction; the baseline's score (``ptychi``) is the evaluation's, read from
its ``metrics.json`` through the catalog, never scored again. A model's problem is that
model's score: ``missing`` (no file), ``failed`` (the file breaks the input rules, with
the file and key), or ``not_scored`` (the job has no ground truth to score against).
Nothing here raises for one job or one model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fly64_recon.datasets.job_folder import RECONSTRUCTION_FILE, JobArtifacts
from fly64_recon.datasets.model_source import ModelSource, ObjectKeys
from fly64_recon.datasets.npz import NPZFormatError, NPZSource
from fly64_recon.pipelines.comparison.models import ModelFileError, model_on_grid
from fly64_recon.pipelines.reporting import markdown_table
from fly64_recon.record import BASELINE, ScoreStatus, job_fields
from fly64_recon.science import metrics as m
from fly64_recon.science.scoring import (
    SCORE_COLUMNS,
    SCORE_KEYS,
    TRUTH_MEMBERS,
    Bounds,
    Footing,
    has_ground_truth,
    job_footing,
    score,
    score_rows,
    unscored,
)
from fly64_recon.study import Job, dose_label

logger = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "dose",
    "view",
    "split",
    "model",
    *SCORE_COLUMNS,
    "coverage",
    "status",
    "reason",
]
# The comparison report's columns: the headline metrics of the phase, the amplitude MAE.
REPORT_COLUMNS = (
    *(("phase", metric) for metric in m.HEADLINE),
    ("amplitude", m.METRIC["mae"]),
)
NOT_EVALUATED = (
    "no metrics.json: the evaluation has not scored the pty-chi reconstruction "
    "(kedro run --pipeline evaluation)"
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


def open_model(source: ModelSource) -> tuple[dict[str, np.ndarray] | None, dict]:
    """A model file's arrays and its entry, or None and why not."""
    entry = {"path": source.path}
    if not source.exists():
        return None, {
            **entry,
            **unscored(ScoreStatus.MISSING, f"no file at {source.path}"),
        }
    try:
        arrays, sha256 = source.load()
    except (NPZFormatError, OSError) as error:
        return None, {**entry, **unscored(ScoreStatus.FAILED, str(error))}
    return arrays, {**entry, "sha256": sha256}


def baseline_entry(metrics: Mapping[str, Any], job: Job) -> dict[str, Any]:
    """The pty-chi reconstruction's entry: the evaluation's score of it."""
    entry = {"model": BASELINE, "path": f"{job.output_relpath}/{RECONSTRUCTION_FILE}"}
    if not metrics:
        return {**entry, **unscored(ScoreStatus.MISSING, NOT_EVALUATED)}
    return {**entry, **{key: metrics[key] for key in SCORE_KEYS if key in metrics}}


def baseline_image(
    artifacts: JobArtifacts, metrics: Mapping[str, Any]
) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The pty-chi reconstruction aligned as the evaluation aligned it, and its region."""
    if metrics.get("status") != ScoreStatus.SCORED or artifacts.arrays is None:
        return None
    alignment = m.Alignment.from_dict(metrics["alignment"])
    image = artifacts.arrays["reconstructed_object"]
    return m.apply_alignment(image, alignment), alignment.region


def compare(
    artifacts: JobArtifacts,
    source: NPZSource,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *models: ModelSource,
    job: Job,
    names: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score every model of the job (``params``: the scoring parameters) beside the
    evaluation's score of the pty-chi reconstruction; their aligned images for a
    figure."""
    baseline = baseline_entry(metrics, job)
    by_name = dict(zip(names, models, strict=True))
    opened = {name: open_model(model) for name, model in by_name.items()}
    try:
        truth, footing = job_truth(source, artifacts, params)
    except NoGroundTruth as error:
        return _not_scored(job, baseline, opened, str(error)), {}
    except Exception as error:  # noqa: BLE001 - one job's comparison, not the study's
        logger.exception("%s: the ground truth cannot be read", job.namespace)
        why = f"the ground truth cannot be read: {type(error).__name__}: {error}"
        return _not_scored(job, baseline, opened, why), {}
    bounds = Bounds.from_params(params)
    entries, aligned = [baseline], {BASELINE: baseline_image(artifacts, metrics)}
    for name, (arrays, entry) in opened.items():
        found, aligned[name] = (
            (entry, None)
            if arrays is None
            else score_model(arrays, entry, by_name[name].keys, truth, footing, bounds)
        )
        entries.append({"model": name, **found})
    _log_unscored(job, entries)
    result = {
        **job_fields(job),
        "ground_truth": True,
        "lit_px": int(footing.mask.sum()),
        "photons_per_pattern": footing.photons_per_pattern,
        "noise_floor": {"phase": footing.noise_floor()},
        "models": entries,
    }
    return result, figure_images(truth, footing.mask, aligned)


def job_truth(
    source: NPZSource, artifacts: JobArtifacts, params: Mapping[str, Any]
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


def _not_scored(
    job: Job, baseline: dict[str, Any], opened: Mapping[str, tuple], reason: str
) -> dict[str, Any]:
    """The job's entries when there is nothing to score against."""
    entries = [baseline] + [
        {"model": name, **entry}
        if arrays is None
        else {"model": name, **entry, **unscored(ScoreStatus.NOT_SCORED, reason)}
        for name, (arrays, entry) in opened.items()
    ]
    _log_unscored(job, entries)
    return {
        **job_fields(job),
        "ground_truth": False,
        "reason": reason,
        "models": entries,
    }


def _log_unscored(job: Job, entries: Sequence[Mapping[str, Any]]) -> None:
    """One log line per reconstruction of the job that was not scored (the closing
    summary says it once per model)."""
    for entry in entries:
        if entry["status"] != ScoreStatus.SCORED:
            logger.info(
                "%s: %s %s: %s",
                job.namespace,
                entry["model"],
                entry["status"],
                entry["reason"],
            )


def score_model(
    arrays: Mapping[str, np.ndarray],
    entry: Mapping[str, Any],
    keys: ObjectKeys,
    truth: np.ndarray,
    footing: Footing,
    bounds: Bounds,
) -> tuple[dict[str, Any], tuple[np.ndarray, tuple[int, ...]] | None]:
    """One model's entry, scored on the job's footing; its aligned region."""
    path = entry["path"]
    try:
        image, scored = model_on_grid(arrays, path, footing.mask, keys)
        found = score(image, truth, footing, bounds, scored)
    except ModelFileError as error:
        return {**entry, **unscored(ScoreStatus.FAILED, str(error))}, None
    except Exception as error:  # noqa: BLE001 - one model's scores, not the study's
        logger.exception("%s: scoring failed", path)
        reason = f"{path}: scoring failed: {type(error).__name__}: {error}"
        return {**entry, **unscored(ScoreStatus.FAILED, reason)}, None
    alignment = m.Alignment.from_dict(found["alignment"])
    return {**entry, **found}, (m.apply_alignment(image, alignment), alignment.region)


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
    scored = score_rows(entry)
    if not scored:
        return [{**head, "status": entry["status"], "reason": entry["reason"]}]
    tail = {"coverage": entry["coverage"], "status": entry["status"], "reason": ""}
    return [{**head, **row, **tail} for row in scored]


def comparison_report(comparisons: Sequence[dict[str, Any]]) -> str:
    """Markdown: each model against the pty-chi baseline per dose, view and split."""
    names = sorted(
        {e["model"] for job in comparisons for e in job["models"]} - {BASELINE}
    )
    rows = [
        _report_row(job, entry, _entry(job, BASELINE))
        for job in comparisons
        for entry in job["models"]
        if entry["model"] != BASELINE and entry["status"] == ScoreStatus.SCORED
    ]
    unscored = [
        f"- dose {dose_label(job['dose'])}, {job['view']}, {job['split']}, "
        f"`{entry['model']}`: {entry['status']}: {entry['reason']}"
        for job in comparisons
        for entry in job["models"]
        if entry["status"] != ScoreStatus.SCORED
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
        lines += ["## Model against pty-chi", "", *_report_table(rows), ""]
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
        (
            e
            for e in job["models"]
            if e["model"] == name and e["status"] == ScoreStatus.SCORED
        ),
        None,
    )


def _report_row(
    job: Mapping[str, Any], entry: Mapping[str, Any], base: Mapping | None
) -> list[str]:
    cells = [dose_label(job["dose"]), job["view"], job["split"], f"`{entry['model']}`"]
    for part, metric in REPORT_COLUMNS:
        cells.append(metric.number.format(entry[part][metric.name]))
        cells.append(
            "-" if base is None else metric.number.format(base[part][metric.name])
        )
    cells.append(f"{entry['null']['phase']['mae']:.4f}")
    cells.append(f"{entry['noise_floor']['phase']['mae']:.4f}")
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
        # Equal within a millionth: a copy of the baseline is not "better" by rounding.
        better = (
            "better" if ratio < 1 - 1e-6 else "worse" if ratio > 1 + 1e-6 else "equal"
        )
        words.append(f"{better}: {ratio:.2f}x pty-chi's phase MAE")
    if mae >= entry["null"]["phase"]["mae"]:
        words.append("not below the flat object")
    if entry["coverage"] < 1:
        words.append(f"scored on {entry['coverage']:.0%} of the lit pixels")
    return "; ".join(words)


def _report_table(rows: Sequence[Sequence[str]]) -> list[str]:
    header = ["dose", "view", "split", "model"]
    for part, metric in REPORT_COLUMNS:
        header += [metric.heading(part), "pty-chi"]
    header += ["flat object phase MAE", "noise floor (rad)", "verdict"]
    return markdown_table(header, rows, first_number=4, end_number=len(header) - 1)
