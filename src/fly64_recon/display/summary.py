"""The closing summary of a run, as plain lines: what ran, how well, what failed, where.

Its numbers come from the run's progress (this run's jobs by status, the failures) and
from the study manifest on disk (the headline metric of every job of the study, as the
evaluation last wrote it). Plain text, so that a terminal, a CI log and the README show
the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from fly64_recon.display.progress import StudyProgress
from fly64_recon.record import BASELINE, OUTCOMES, JobStatus, ScoreStatus
from fly64_recon.study import VIEWS, Job, dose_label

REASON_WIDTH = 100
CELL_WIDTH = 17
MOST_FLAGGED = 20
FLAG_WIDTH = 70


def closing_summary(
    progress: StudyProgress,
    manifest: Mapping[str, Any] | None,
    where: Mapping[str, Path | None],
    error: BaseException | None = None,
    since: float | None = None,
    compared: Sequence[Mapping[str, str]] = (),
) -> list[str]:
    """The summary's lines: headline, metric table, the models compared (``compared``:
    this run's comparison table, its CSV's rows), failures, where things are.

    ``since`` (Unix time) is when the run started: a file in ``where`` not written since
    is marked as an earlier run's.
    """
    lines = [headline(progress, error, bool(compared))]
    # A run that only compared models shows them, not the baseline's table again.
    only_compared = compared and not progress.total
    jobs = manifest.get("jobs", []) if manifest and not only_compared else []
    lines += ["", *metric_table(jobs)] if jobs else []
    lines += flagged(jobs)
    lines += comparison_lines(compared)
    failures = progress.failures()
    if failures:
        lines += ["", "Failed jobs:"]
        lines += [f"  {ns}: {first_line(why)}" for ns, why in failures.items()]
    lines += ["", *locations(where, since)]
    return lines


def headline(
    progress: StudyProgress, error: BaseException | None = None, compared: bool = False
) -> str:
    """How the run ended, how long it took, its jobs by status."""
    took = clock(progress.elapsed())
    if error is not None:
        start = f"Run stopped after {took} by {type(error).__name__}"
    else:
        start = f"Run finished in {took}"
    if not progress.total:
        what = (
            "models compared with the pty-chi baseline"
            if compared
            else ("no reconstruction job in this run")
        )
        return f"{start}: {what}."
    counts = progress.counts()
    parts = [f"{counts[s]} {s}" for s in OUTCOMES if counts[s]]
    missing = progress.total - len(progress.finished)
    parts += [f"{missing} not finished"] if missing else []
    devices = sorted(
        {r.device for r in progress.finished.values() if r.device and r.wall_time_s}
    )
    on = f" on {', '.join(devices)}" if devices else ""
    return f"{start}: {progress.total} job(s){on}: {', '.join(parts)}."


def metric_table(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Phase MAE per view and dose (mean over splits), the null reference beside it."""
    measured = [job for job in jobs if phase_mae(job) is not None]
    if not measured:
        made = [j for j in jobs if JobStatus(j["status"]).has_reconstruction]
        if not made:
            return ["No reconstruction in the manifest yet."]
        return [
            f"{len(made)} reconstruction(s), none measured yet: "
            "kedro run --pipeline evaluation"
        ]
    doses = sorted({job["dose"] for job in jobs})
    views = [v for v in VIEWS if any(job["view"] == v for job in jobs)]
    splits = sorted({job["split"] for job in measured})
    nulls = any(null_mae(job) is not None for job in measured)
    title = "Phase MAE (rad) against the ground truth, mean over splits " + ", ".join(
        splits
    )
    title += "; [null: no reconstruction, a flat object]" if nulls else ""
    header = "view".ljust(10) + "".join(
        f"dose {dose_label(d)}".ljust(CELL_WIDTH) for d in doses
    )
    rows = [
        view.ljust(10)
        + "".join(
            cell([j for j in measured if j["view"] == view and j["dose"] == d]).ljust(
                CELL_WIDTH
            )
            for d in doses
        )
        for view in views
    ]
    return [title, header.rstrip(), *(row.rstrip() for row in rows)]


def cell(jobs: Sequence[Mapping[str, Any]]) -> str:
    """``0.0930 [0.4100]``: the mean phase MAE of ``jobs``, their null's beside it."""
    maes = [phase_mae(job) for job in jobs]
    if not maes:
        return "-"
    text = f"{fmean(maes):.4f}"
    nulls = [n for n in map(null_mae, jobs) if n is not None]
    return f"{text} [{fmean(nulls):.4f}]" if nulls else text


def flagged(jobs: Sequence[Mapping[str, Any]], most: int = MOST_FLAGGED) -> list[str]:
    """The evaluation's flags: a line per flagged job (its first flag), at most ``most``."""
    rows = [
        f"  {job['namespace']}: {gist(flags[0])}"
        + (f" (+{len(flags) - 1} more)" if len(flags) > 1 else "")
        for job in jobs
        if (flags := _dig(job, "metrics", "flags"))
    ]
    if not rows:
        return []
    more = [f"  ... and {len(rows) - most} more"] if len(rows) > most else []
    title = f"Flagged jobs ({len(rows)}; every flag in the study report):"
    return ["", title, *rows[:most], *more]


def comparison_lines(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """Each model against pty-chi, per view and dose: the ratio of their phase MAE (mean
    over splits); then, per model, the jobs it has no file for."""
    if not rows:
        return []
    mae = {
        (row["model"], row["view"], float(row["dose"]), row["split"]): float(
            row["phase"]
        )
        for row in rows
        if row["status"] == ScoreStatus.SCORED and row["metric"] == "mae"
    }
    models = sorted({model for model, *_ in mae} - {BASELINE})
    doses = sorted({dose for _, _, dose, _ in mae})
    views = [v for v in VIEWS if any(view == v for _, view, *_ in mae)]
    lines = [
        "",
        "Models against pty-chi: phase MAE, model / pty-chi, mean over splits "
        "(below 1: the model is better)",
        "model".ljust(12)
        + "view".ljust(10)
        + "".join(f"dose {dose_label(d)}".ljust(CELL_WIDTH) for d in doses).rstrip(),
    ]
    for model in models:
        for view in views:
            cells = [_ratio_cell(mae, model, view, dose) for dose in doses]
            if any(c != "-" for c in cells):
                row = model.ljust(12) + view.ljust(10)
                lines.append(
                    (row + "".join(c.ljust(CELL_WIDTH) for c in cells)).rstrip()
                )
    for model in sorted({row["model"] for row in rows}):
        for status, words in UNSCORED_WORDS.items():
            jobs = [
                job_name(row)
                for row in rows
                if row["model"] == model and row["status"] == status
            ]
            if jobs:
                line = f"{model}: {words} {len(jobs)} job(s): {', '.join(jobs)}"
                lines.append(first_line(line))
    return lines


# What a model's unscored rows say, a line per model and kind (the reasons are in the
# comparison report).
UNSCORED_WORDS = {
    ScoreStatus.MISSING.value: "no file for",
    ScoreStatus.FAILED.value: "a file that could not be scored for",
}


def _ratio_cell(
    mae: Mapping[tuple[str, str, float, str], float], model: str, view: str, dose: float
) -> str:
    """``0.82x``: the model's phase MAE over pty-chi's, for the splits both have."""
    ratios = [
        value / mae[(BASELINE, view, dose, split)]
        for (name, v, d, split), value in mae.items()
        if (name, v, d) == (model, view, dose) and (BASELINE, view, dose, split) in mae
    ]
    return f"{fmean(ratios):.2f}x" if ratios else "-"


def job_name(row: Mapping[str, str]) -> str:
    """A comparison row's job, ``dose_1e4.dense.test``."""
    return Job(float(row["dose"]), row["view"], row["split"]).namespace


def phase_mae(job: Mapping[str, Any]) -> float | None:
    """A manifest entry's ``metrics.phase.mae``, if the evaluation wrote one."""
    return _dig(job, "metrics", "phase", "mae")


def null_mae(job: Mapping[str, Any]) -> float | None:
    """A manifest entry's ``metrics.null.phase.mae`` (no reconstruction), if written."""
    return _dig(job, "metrics", "null", "phase", "mae")


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def locations(
    where: Mapping[str, Path | None], since: float | None = None
) -> list[str]:
    """One line per place a person looks next, for the files that exist."""
    found = {name: path for name, path in where.items() if path and path.exists()}
    width = max(map(len, found), default=0) + 2
    return [
        f"{name.ljust(width)}{shown(path)}"
        + (" (from an earlier run)" if since and path.stat().st_mtime < since else "")
        for name, path in found.items()
    ]


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def gist(flag: str) -> str:
    """A flag's statement without its details: up to its first ``; `` or `` (``."""
    return first_line(re.split(r"; | \(", flag, maxsplit=1)[0], FLAG_WIDTH)


def first_line(text: str, width: int = REASON_WIDTH) -> str:
    """The first line of ``text``, cut to ``width`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def clock(seconds: float) -> str:
    """``0:03:05``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
