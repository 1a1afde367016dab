"""The study's console: one live display while the jobs run, a closing summary after.

On a terminal a live display (rich) shows the jobs done, failed and cached out of n,
the running jobs with their epoch and loss, the time elapsed and the time left; a line
is printed above it for every job that finishes. Without a terminal (CI, a pipe) the
same arrives as plain lines: one per finished job, and a progress line at most every
``PLAIN_EVERY_S`` seconds. The jobs' epochs reach the display as log records of
``record.PROGRESS_LOGGER`` (from worker processes too, see ``logs.WorkerRecords``);
the jobs' starts and records come from the hooks.
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import rich
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fly64_recon.display.logs import RunLog
from fly64_recon.display.progress import StudyProgress
from fly64_recon.display.summary import (
    clock,
    closing_summary,
    first_line,
    gist,
    shown,
)
from fly64_recon.record import PROGRESS_LOGGER, JobRecord, JobStatus
from fly64_recon.study import StudyFiles, dose_dirname

PLAIN_EVERY_S = 10.0
SHOWN_RUNNING = 8  # running jobs listed by name; the others are counted
MANIFEST_FILE = "reconstruction_manifest.json"  # catalog.yml: manifest_entry
REPORT_FILE = "study_summary.md"  # catalog_evaluation.yml: study_summary.report
# catalog_comparison.yml: comparison_summary.metrics_table and .report
COMPARISON_TABLE_FILE = "comparison_metrics.csv"
COMPARISON_REPORT_FILE = "comparison_summary.md"


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes what a person reads: manifest, report, run logs, the
    study tree."""

    artifact_root: Path | None = None
    reporting_root: Path | None = None
    phase_c_root: Path | None = None
    phase_d_root: Path | None = None

    @classmethod
    def from_context(cls, context: Any) -> RunPaths:
        """The ``artifact_root`` and ``reporting_root`` globals, runtime ``--params`` first."""
        loader = context.config_loader
        roots = {**loader["globals"], **(getattr(loader, "runtime_params", {}) or {})}

        def root(name: str) -> Path | None:
            value = roots.get(name)
            return Path(context.project_path) / value if value else None

        return cls(
            *map(root, ("artifact_root", "reporting_root")),
            *map(root, ("phase_c_root", "phase_d_root")),
        )

    @property
    def manifest(self) -> Path | None:
        return self.artifact_root / MANIFEST_FILE if self.artifact_root else None

    @property
    def report(self) -> Path | None:
        return self.reporting_root / REPORT_FILE if self.reporting_root else None

    @property
    def comparison_table(self) -> Path | None:
        if self.reporting_root is None:
            return None
        return self.reporting_root / COMPARISON_TABLE_FILE

    @property
    def comparison_report(self) -> Path | None:
        if self.reporting_root is None:
            return None
        return self.reporting_root / COMPARISON_REPORT_FILE

    @property
    def logs(self) -> Path | None:
        return self.artifact_root / "logs" if self.artifact_root else None


def finished_line(progress: StudyProgress, record: JobRecord) -> str:
    """``[ 7/18] dose_1e4.dense.test succeeded in 8.2 s, final loss 0.0213``, then
    the job's warnings."""
    width = len(str(progress.total))
    count = f"[{len(progress.finished):>{width}}/{progress.total}]"
    text = f"{count} {record.namespace} {record.status}"
    if record.status is JobStatus.SUCCEEDED and record.wall_time_s is not None:
        text += f" in {record.wall_time_s:.1f} s"
        if record.final_loss is not None:
            text += f", final loss {record.final_loss:.4g}"
        text += "".join(f"; {gist(w)}" for w in record.warnings)
    elif record.reason and record.status is not JobStatus.CACHED:
        text += f": {first_line(record.reason)}"
    return text


def ingested_lines(study: StudyFiles, paths: RunPaths) -> tuple[str, str]:
    """What an ingest wrote, and the command that reconstructs it."""
    folders = [
        root / dose_dirname(study.dose)
        for root in (paths.phase_c_root, paths.phase_d_root)
        if root
    ]
    roots = "".join(
        f",{name}={shown(root)}"
        for name, root in (
            ("phase_c_root", paths.phase_c_root),
            ("phase_d_root", paths.phase_d_root),
        )
        if root
    )
    wrote = (
        f"Ingested {study.source}: {study.n_patterns} patterns, dose {study.dose:g}; "
        f"{len(study.files)} files in {' and '.join(map(shown, folders))}"
    )
    command = (
        f'Next: kedro run --pipeline ptychi_baseline --params "study.doses='
        f'[{study.dose!r}]{roots}"'
    )
    return wrote, command


def status_line(progress: StudyProgress) -> str:
    """``7/18 jobs done (5 succeeded, 1 cached, 1 failed), 0:01:23, about 0:02:10 left``."""
    counts = progress.counts()
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    text = f"{len(progress.finished)}/{progress.total} jobs done"
    text += f" ({parts})" if parts else ""
    text += f", {clock(progress.elapsed())} elapsed"
    left = progress.remaining()
    return text + (f", about {clock(left)} left" if left is not None else "")


def running_line(namespace: str, progress: StudyProgress) -> str:
    """``dose_1e4.dense.test epoch 12/20``."""
    job = progress.running[namespace]
    return namespace + (
        f" epoch {job.epoch}/{job.num_epochs}" if job.num_epochs else ""
    )


def running_list(progress: StudyProgress) -> str:
    """The first running jobs with their epoch, and how many more: for one line."""
    names = list(progress.running)
    shown = [running_line(ns, progress) for ns in names[:SHOWN_RUNNING]]
    more = len(names) - SHOWN_RUNNING
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


class View(Protocol):
    """How the study's progress is shown.

    ``due`` is called with the run's lock held and only reads the progress; ``show``
    prints, without the lock (the live display's refresh thread takes the lock to
    draw, and rich's own lock to print).
    """

    def begin(self) -> None: ...
    def due(self) -> str | None: ...
    def show(self, line: str) -> None: ...
    def end(self) -> None: ...


class PlainView:
    """Plain lines: one per finished job, a progress line at most every ``every`` s."""

    def __init__(
        self,
        console: Console,
        progress: StudyProgress,
        every: float = PLAIN_EVERY_S,
        clock_: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self._progress = progress
        self._every = every
        self._clock = clock_
        self._last = clock_()

    def begin(self) -> None:
        if self._progress.total:
            self.show(f"Running {self._progress.total} reconstruction job(s)")

    def due(self) -> str | None:
        """The progress line, when the last one is ``every`` seconds old."""
        if self._clock() - self._last < self._every or not self._progress.total:
            return None
        self._last = self._clock()
        running = running_list(self._progress)
        return status_line(self._progress) + (f"; running {running}" if running else "")

    def show(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)

    def end(self) -> None:
        """Nothing to take down."""


class LiveView:
    """A live display on a terminal; finished jobs' lines scroll above it."""

    def __init__(
        self,
        console: Console,
        progress: StudyProgress,
        lock: threading.RLock,
    ) -> None:
        self._progress = progress
        self._lock = lock
        self._live = Live(
            console=console,
            get_renderable=self._render,
            refresh_per_second=4,
            transient=True,
        )

    def begin(self) -> None:
        self._live.start()

    def due(self) -> None:
        """Never: the display refreshes itself."""

    def show(self, line: str) -> None:
        self._live.console.print(line, markup=False, highlight=False)

    def end(self) -> None:
        self._live.stop()

    def _render(self) -> RenderableType:
        with self._lock:
            return render(self._progress)


def render(progress: StudyProgress) -> RenderableType:
    """The live display: a bar and the status line, then a row per running job."""
    running = progress.running_work()
    bar = ProgressBar(
        total=max(progress.total, 1),
        completed=len(progress.finished) + running,
        width=30,
    )
    head = Table.grid(padding=(0, 1))
    head.add_row(bar, Text(status_line(progress)))
    jobs = Table.grid(padding=(0, 2))
    names = list(progress.running)
    for namespace in names[:SHOWN_RUNNING]:
        job = progress.running[namespace]
        epoch = f"epoch {job.epoch}/{job.num_epochs}" if job.num_epochs else "starting"
        loss = f"loss {job.loss:.4g}" if job.loss is not None else ""
        jobs.add_row(f"  {namespace}", epoch, loss)
    if len(names) > SHOWN_RUNNING:
        jobs.add_row(f"  and {len(names) - SHOWN_RUNNING} more running", "", "")
    return Group(head, jobs)


class _EpochHandler(logging.Handler):
    """Feeds the progress records of the jobs' epochs to the study's console."""

    def __init__(self, run: StudyRun) -> None:
        super().__init__()
        self._run = run

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "epoch"):
            self._run.epoch(
                record.namespace, record.epoch, record.num_epochs, record.loss
            )


def interactive(console: Console) -> bool:
    """Whether ``console`` is a terminal that can redraw a live display."""
    return console.is_terminal and not console.is_dumb_terminal


class StudyRun:
    """One run on the console: its display, its log file, its summary at the end."""

    def __init__(
        self,
        jobs: Iterable[str],
        paths: RunPaths | None = None,
        console: Console | None = None,
    ) -> None:
        self.progress = StudyProgress(jobs)
        self._paths = paths or RunPaths()
        self._console = console or rich.get_console()
        self._lock = threading.RLock()
        self._view: View = (
            LiveView(self._console, self.progress, self._lock)
            if interactive(self._console)
            else PlainView(self._console, self.progress)
        )
        self._log = RunLog(self._paths.logs) if self._paths.logs else None
        self._epochs = _EpochHandler(self)
        self._open = False
        self._opened_at = time.time()
        self._next: list[str] = []  # what a person runs next, after the summary

    def open(self) -> None:
        """Start the log file, listen for epochs, show the display."""
        if self._log:
            self._log.open()
        logging.getLogger(PROGRESS_LOGGER).addHandler(self._epochs)
        self._view.begin()
        self._open = True
        atexit.register(self._end_view)  # an interrupted run leaves a sane terminal

    def job_started(self, namespace: str) -> int:
        """A job starts; returns k of "job k of n"."""
        with self._lock:
            return self.progress.start(namespace)

    def epoch(self, namespace: str, epoch: int, num_epochs: int, loss: float) -> None:
        """A running job finished an epoch (from the log listener's thread, too)."""
        with self._lock:
            self.progress.epoch(namespace, epoch, num_epochs, loss)
            lines = [self._view.due()]
        self._show(lines)

    def job_finished(self, record: JobRecord) -> None:
        """A node returned a job's record."""
        with self._lock:
            first = self.progress.finish(record)
            lines = [finished_line(self.progress, record) if first else None]
            lines.append(self._view.due())
        self._show(lines)

    def ingested(self, study: StudyFiles) -> None:
        """A node returned a measured scan's study files: say where, and what next."""
        wrote, command = ingested_lines(study, self._paths)
        self._next.append(command)
        self._show([wrote])

    def _show(self, lines: list[str | None]) -> None:
        for line in lines:
            if line is not None:
                self._view.show(line)

    def close(self, error: BaseException | None = None) -> None:
        """Take the display down, print the summary, close the log file."""
        self._end_view()
        atexit.unregister(self._end_view)
        logging.getLogger(PROGRESS_LOGGER).removeHandler(self._epochs)
        compared = read_csv_since(self._paths.comparison_table, self._opened_at)
        where = {
            "report": self._paths.report,
            "comparison": self._paths.comparison_report if compared else None,
            "manifest": self._paths.manifest,
            "log": self._log.path if self._log else None,
        }
        manifest = read_json(self._paths.manifest)
        summary = closing_summary(
            self.progress, manifest, where, error, self._opened_at, compared
        )
        after = ["", *self._next] if self._next else []
        for line in ["", *summary, *after]:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)
        if self._log:
            self._log.close()

    def _end_view(self) -> None:
        if self._open:
            self._open = False
            self._view.end()


def read_csv_since(path: Path | None, since: float) -> list[dict[str, str]]:
    """A CSV's rows when this run wrote it (since ``since``, Unix time), else none."""
    if path is None or not path.exists() or path.stat().st_mtime < since:
        return []
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, ValueError):
        return []


def read_json(path: Path | None) -> dict[str, Any] | None:
    """A JSON file's content; None when there is none or it cannot be read."""
    if path is None or not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
