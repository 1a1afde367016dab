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
from fly64_recon.record import OUTCOMES, JobStatus
from fly64_recon.study import VIEWS, dose_label

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
) -> list[str]:
    """The summary's lines: headline, metric table, failures, where things are.

    ``since`` (Unix time) is when the run started: a file in ``where`` not written since
    is marked as an earlier run's.
    """
    lines = [headline(progress, error)]
    jobs = manifest.get("jobs", []) if manifest else []
    lines += ["", *metric_table(jobs)] if jobs else []
    lines += flagged(jobs)
    failures = progress.failures()
    if failures:
        lines += ["", "Failed jobs:"]
        lines += [f"  {ns}: {first_line(why)}" for ns, why in failures.items()]
    lines += ["", *locations(where, since)]
    return lines


def headline(progress: StudyProgress, error: BaseException | None = None) -> str:
    """How the run ended, how long it took, its jobs by status."""
    took = clock(progress.elapsed())
    if error is not None:
        start = f"Run stopped after {took} by {type(error).__name__}"
    else:
        start = f"Run finished in {took}"
    if not progress.total:
        return f"{start}: no reconstruction job in this run."
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
