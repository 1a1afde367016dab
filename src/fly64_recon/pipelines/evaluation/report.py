"""The study summary in words: ``study_summary.md`` from every job's metrics.

Every score is read beside its references on the same lit pixels: the null reference
(a flat object: no reconstruction at all) and the shot-noise floor. Below the first,
above the second; the gap between is what convergence and the engine decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import mean
from typing import Any

from fly64_recon.pipelines.reporting import markdown_table
from fly64_recon.record import ScoreStatus
from fly64_recon.science.metrics import HEADLINE, METRIC
from fly64_recon.study import VIEWS, dose_label

Job = dict[str, Any]


def summary_report(all_metrics: Sequence[Job]) -> str:
    """The study's results as Markdown: tables, flags, science check, what is missing."""
    measured = [job for job in all_metrics if job.get("status") == ScoreStatus.SCORED]
    fit_only = [
        job for job in all_metrics if job.get("status") == ScoreStatus.NOT_SCORED
    ]
    evaluated = measured + fit_only
    missing = [job for job in all_metrics if job not in evaluated]
    engines = sorted({job["engine"] for job in evaluated if job.get("engine")})
    lines = [
        f"# pty-chi {'/'.join(engines) or 'LSQML'} baseline: study summary",
        "",
        f"{len(all_metrics)} jobs: {len(measured)} measured against the ground truth, "
        f"{len(fit_only)} on data fit only (no ground truth), {len(missing)} not "
        "evaluated.",
        "",
    ]
    if measured:
        lines += [
            "## Against the ground truth, where the beam was",
            "",
            *_measured_table(measured),
            "",
        ]
    if evaluated:
        lines += [
            "## The views, as the beam saw them",
            "",
            *_views_table(evaluated),
            "",
        ]
        lines += ["## Flags", "", *_flag_lines(evaluated), ""]
        lines += ["## Convergence", "", *_convergence_lines(evaluated), ""]
    if measured:
        lines += ["## Science check", "", *science_check(measured), ""]
    moved = [job for job in evaluated if "positions" in job]
    if moved:
        lines += ["## Positions", "", *_positions_table(moved), ""]
    halves = [job for job in evaluated if "half_dataset_frc" in job]
    if halves:
        lines += ["## Half-dataset FRC", "", *_half_table(halves), ""]
    if fit_only:
        lines += ["## Data fit only (no ground truth)", "", *_fit_table(fit_only), ""]
    if missing:
        lines += ["## Not evaluated", ""]
        lines += [f"- `{job['namespace']}`: {job['reason']}" for job in missing]
        lines += [""]
    lines += [NOTES, ""]
    return "\n".join(lines)


NOTES = (
    "Every ground-truth number is measured inside the job's illumination mask (the "
    "summed |probe|^2 over the job's positions at or above `illumination_fraction` of "
    "its maximum) after subpixel registration, removal of the global phase and linear "
    "phase ramp, and amplitude scaling. *null* is the same metric for a flat object "
    "(no reconstruction) on the same mask; *floor* is the shot-noise limit of the "
    "phase MAE, sqrt(2/pi) / (2 sqrt(n)) averaged over the mask for n photons per lit "
    "pixel (see docs/metrics.md). A score is evidence only between the two. FRC 0.5 "
    "is where the Fourier ring correlation with the ground truth falls below 0.5, as "
    "a fraction of Nyquist (1.0: never). Overlap is the mean disc-overlap fraction of "
    "each position with its 6 nearest neighbours, for a disc of the probe's FWHM. "
    "Positions (when the input has true ones): the RMS distance of the recorded and of "
    "the job's positions from the true ones, each after removing a common shift. "
    "Per-job details: `metrics.json` in each job folder; every number: `metrics.csv`."
)


def _ratio(job: Job, reference: str) -> float:
    base = job["null"]["phase"] if reference == "null" else job["noise_floor"]["phase"]
    return job["phase"]["mae"] / base["mae"]


# The phase MAE beside its references, the phase's other headline metrics, the
# amplitude MAE beside its null (metrics.METRICS says which are headline).
MEASURED_COLUMNS: tuple[tuple[str, Callable[[Job], str]], ...] = (
    (METRIC["mae"].heading("phase"), lambda j: f"{j['phase']['mae']:.4f}"),
    ("null", lambda j: f"{j['null']['phase']['mae']:.4f}"),
    ("floor", lambda j: f"{j['noise_floor']['phase']['mae']:.4f}"),
    ("MAE / null", lambda j: f"{_ratio(j, 'null'):.2f}"),
    ("MAE / floor", lambda j: f"{_ratio(j, 'floor'):.1f}"),
    *(
        (
            metric.heading("phase"),
            lambda j, metric=metric: metric.number.format(j["phase"][metric.name]),
        )
        for metric in HEADLINE
        if metric.name != "mae"
    ),
    (METRIC["mae"].heading("amplitude"), lambda j: f"{j['amplitude']['mae']:.4f}"),
    ("amplitude null", lambda j: f"{j['null']['amplitude']['mae']:.4f}"),
)


def _measured_table(jobs: Sequence[Job]) -> list[str]:
    header = ["dose", "view", "split", *(name for name, _ in MEASURED_COLUMNS)]
    rows = [
        [
            _dose(job),
            job["view"],
            job["split"],
            *(cell(job) for _, cell in MEASURED_COLUMNS),
        ]
        for job in jobs
    ]
    return markdown_table(header, rows)


def _views_table(jobs: Sequence[Job]) -> list[str]:
    """Per view: measured overlap, probe diameter, and photons per lit pixel per dose."""
    doses = sorted({job["dose"] for job in jobs})
    header = [
        "view",
        "overlap",
        "probe FWHM (px)",
        *(f"photons/px² at {dose_label(d)}" for d in doses),
    ]
    rows = []
    for view in _views(jobs):
        in_view = [job for job in jobs if job["view"] == view]
        photons = [
            _mean(job["scan"]["photons_per_px2"] for job in in_view if job["dose"] == d)
            for d in doses
        ]
        rows.append(
            [
                view,
                _fmt(_mean(job["scan"]["overlap"] for job in in_view), "{:.3f}"),
                _fmt(
                    _mean(job["scan"]["probe_diameter_px"] for job in in_view), "{:.1f}"
                ),
                *(_fmt(p, "{:.3g}") for p in photons),
            ]
        )
    return markdown_table(header, rows, first_number=1)


def _flag_lines(jobs: Sequence[Job]) -> list[str]:
    flagged = [
        f"- `{job['namespace']}`: {flag}." for job in jobs for flag in job["flags"]
    ]
    return flagged or ["No job is flagged."]


def _convergence_lines(jobs: Sequence[Job]) -> list[str]:
    """Which jobs converged by their rule, and which did not."""
    verdicts = {job["namespace"]: job.get("convergence", {}) for job in jobs}
    stopped = [job for job in jobs if verdicts[job["namespace"]].get("converged")]
    unjudged = [
        job for job in jobs if verdicts[job["namespace"]].get("converged") is None
    ]
    rest = [job for job in jobs if job not in stopped and job not in unjudged]
    epochs = [job["data_fit"]["epochs"] for job in jobs]
    rules = sorted({str(v.get("stop_rule") or "loss") for v in verdicts.values()})
    meaning = {
        "object": "the object had stopped changing against its noise floor",
        "loss": "the loss had stopped improving",
    }
    lines = [
        f"{len(stopped)} of {len(jobs)} evaluated jobs converged ("
        + " or ".join(meaning.get(rule, rule) for rule in rules)
        + f" by the end); epochs run: {min(epochs)}-{max(epochs)}."
    ]
    ran_on = [
        plateau
        for job in jobs
        if (plateau := verdicts[job["namespace"]].get("plateau_epoch")) is not None
        and plateau < job["data_fit"]["epochs"]
    ]
    if ran_on:
        lines.append(
            f"{len(ran_on)} of them ran on past the epoch at which the loss stopped "
            f"improving (epochs {min(ran_on)}-{max(ran_on)})."
        )
    lines += [
        f"- `{job['namespace']}` did not converge: "
        f"{verdicts[job['namespace']].get('stop_reason', 'unknown')} after "
        f"{job['data_fit']['epochs']} epochs."
        for job in rest
    ]
    lines += [
        f"- `{job['namespace']}`: convergence not judged (an engine whose loss is "
        f"not a data misfit runs its epoch cap): {job['data_fit']['epochs']} epochs."
        for job in unjudged
    ]
    return lines


def science_check(measured: Sequence[Job]) -> list[str]:
    """Per view: does the phase MAE fall with dose; at the top dose, beside the null."""
    lines = []
    top = max(job["dose"] for job in measured)
    for view in _views(measured):
        by_dose = _mean_by_dose(measured, view)
        if len(by_dose) < 2:
            continue
        (low, low_mae), (high, high_mae) = by_dose[0], by_dose[-1]
        verdict = "falls" if high_mae < low_mae else "does NOT fall"
        lines.append(
            f"- {view} view: phase MAE {verdict} from {low_mae:.4f} rad at dose "
            f"{dose_label(low)} to {high_mae:.4f} rad at dose {dose_label(high)} "
            "(mean of the splits)."
        )
    for view in _views(measured):
        at_top = [j for j in measured if j["view"] == view and j["dose"] == top]
        if not at_top:
            continue
        to_null = _mean(j["phase"]["mae"] / j["null"]["phase"]["mae"] for j in at_top)
        to_floor = _mean(
            j["phase"]["mae"] / j["noise_floor"]["phase"]["mae"] for j in at_top
        )
        where = "below" if to_null < 1 else "NOT below"
        lines.append(
            f"- {view} view at dose {dose_label(top)}: {where} the null reference "
            f"({to_null:.2f}x the flat object's phase MAE, {to_floor:.1f}x the noise "
            "floor)."
        )
    return lines or ["- fewer than two doses were measured."]


def _positions_table(jobs: Sequence[Job]) -> list[str]:
    """The positions' RMS error against the true ones, before and after the job."""
    header = [
        "dose",
        "view",
        "split",
        "corrected",
        "RMS before (px)",
        "after",
        "change",
    ]
    rows = [
        [
            _dose(job),
            job["view"],
            job["split"],
            "yes" if job["positions"]["position_correction"] else "no",
            f"{job['positions']['rms_error_before_px']:.3f}",
            f"{job['positions']['rms_error_after_px']:.3f}",
            _fmt(job["positions"]["relative_change"], "{:+.0%}"),
        ]
        for job in jobs
    ]
    return markdown_table(header, rows, first_number=4)


def _half_table(jobs: Sequence[Job]) -> list[str]:
    header = ["dose", "view", "split", "FRC 1/7", "FRC half-bit"]
    rows = [
        [
            _dose(job),
            job["view"],
            job["split"],
            f"{job['half_dataset_frc']['frc_1/7']:.2f}",
            f"{job['half_dataset_frc']['frc_half_bit']:.2f}",
        ]
        for job in jobs
    ]
    return markdown_table(header, rows)


def _fit_table(jobs: Sequence[Job]) -> list[str]:
    header = ["dose", "view", "split", "patterns", "epochs", "final loss"]
    rows = [
        [
            _dose(job),
            job["view"],
            job["split"],
            str(job["n_patterns"]),
            str(job["data_fit"]["epochs"]),
            f"{job['data_fit']['final_loss']:.4g}",
        ]
        for job in jobs
    ]
    return markdown_table(header, rows)


def _mean_by_dose(jobs: Sequence[Job], view: str) -> list[tuple[float, float]]:
    doses = sorted({job["dose"] for job in jobs if job["view"] == view})
    return [
        (
            dose,
            _mean(
                j["phase"]["mae"]
                for j in jobs
                if j["view"] == view and j["dose"] == dose
            ),
        )
        for dose in doses
    ]


def _views(jobs: Sequence[Job]) -> list[str]:
    present = {job["view"] for job in jobs}
    return [view for view in VIEWS if view in present]


def _mean(values: Any) -> float | None:
    found = [v for v in values if v is not None]
    return mean(found) if found else None


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _dose(job: Job) -> str:
    return dose_label(job["dose"])
