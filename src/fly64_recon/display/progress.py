"""Where the run's jobs stand, from what they report.

A job reports each epoch from inside it (``record.report_epoch``: a log record on
``record.PROGRESS_LOGGER`` with the numbers as attributes), so the report travels like
any log record: from a worker process to the ``kedro run`` process through the worker's
channel, where the study's console reads it (``console.py``) and the run's log file
keeps it as a line. The display only listens.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fly64_recon.record import JobRecord, JobStatus

# Finished jobs that did a reconstruction's work: the pace of the run is theirs.
WORKED = (JobStatus.SUCCEEDED, JobStatus.FAILED)
MIN_PACE_S = 2.0  # a pace measured over less says nothing
UNFINISHED = 0.95  # the most a running job counts for, however far past its expectation


@dataclass
class RunningJob:
    """A job of the run that has started: when, and its last reported epoch."""

    started: float
    epoch: int = 0
    num_epochs: int | None = None
    loss: float | None = None

    def fraction(self, expected: int | None) -> float:
        """How much of its work it has done, 0 to 1: its epochs over those it is
        expected to need (else its cap); short of 1 until it finishes."""
        needs = min(filter(None, (expected, self.num_epochs)), default=None)
        return min(self.epoch / needs, UNFINISHED) if needs else 0.0


class StudyProgress:
    """Where this run's jobs stand: finished (by status), running (epoch, loss), time.

    Jobs are the namespaces of the run's nodes tagged ``record.JOB_TAG``; a job has
    finished when a node returns its ``JobRecord``. Records of other jobs (an evaluation
    alone rewrites every record) are kept for the summary but count for nothing.
    """

    def __init__(
        self, jobs: Iterable[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.jobs = tuple(dict.fromkeys(jobs))
        self.running: dict[str, RunningJob] = {}
        self.finished: dict[str, JobRecord] = {}
        self._clock = clock
        self._started_at = clock()
        # Where the pace is measured from: (time, work done then), see remaining().
        self._pace: tuple[float, float] | None = None
        self._epochs_seen = False
        self._starts = 0
        self._worked = 0  # finished jobs that reconstructed (not cached, not skipped)

    @property
    def total(self) -> int:
        return len(self.jobs)

    def start(self, namespace: str) -> int:
        """Job ``namespace`` starts; returns k of "job k of n"."""
        self._starts += 1
        self._running(namespace)
        return self._starts

    def epoch(self, namespace: str, epoch: int, num_epochs: int, loss: float) -> None:
        """A running job's last epoch (it may arrive before the job's start)."""
        if namespace not in self.jobs or namespace in self.finished:
            return
        job = self._running(namespace)
        job.epoch, job.num_epochs, job.loss = epoch, num_epochs, loss
        if not self._epochs_seen:
            self._epochs_seen, self._pace = True, (self._clock(), self._done())

    def _running(self, namespace: str) -> RunningJob:
        now = self._clock()
        if self._pace is None:
            self._pace = (now, 0.0)
        return self.running.setdefault(namespace, RunningJob(now))

    def finish(self, record: JobRecord) -> bool:
        """A job's record; True when it is this run's job and it has just finished."""
        namespace = record.namespace
        if namespace not in self.jobs:
            return False
        first = namespace not in self.finished
        self.finished[namespace] = record  # a later record (with metrics) replaces it
        if first:
            self.running.pop(namespace, None)
            self._worked += record.status in WORKED
        return first

    def counts(self) -> Counter[JobStatus]:
        """This run's finished jobs by status."""
        return Counter(record.status for record in self.finished.values())

    def failures(self) -> dict[str, str]:
        """This run's failed jobs and why."""
        return {
            namespace: record.reason or "no reason"
            for namespace, record in self.finished.items()
            if record.status is JobStatus.FAILED
        }

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self._clock() - self._started_at

    def expected_epochs(self, namespace: str) -> int | None:
        """The epochs a job is expected to need: the median of what the succeeded jobs
        of its dose and view needed, else of its view, else of all (None before any):
        the stopping rule, not the cap, ends most jobs."""
        needed = [
            (ns.split("."), record.epochs_run)
            for ns, record in self.finished.items()
            if record.status is JobStatus.SUCCEEDED and record.epochs_run
        ]
        dose, view = (namespace.split(".") + ["", ""])[:2]
        for alike in (
            lambda parts: parts[:2] == [dose, view],
            lambda parts: parts[1:2] == [view],
            lambda parts: True,
        ):
            epochs = [e for parts, e in needed if alike(parts)]
            if epochs:
                return int(statistics.median(epochs))
        return None

    def running_work(self) -> float:
        """The running jobs' work done, in jobs."""
        return sum(
            job.fraction(self.expected_epochs(ns)) for ns, job in self.running.items()
        )

    def remaining(self) -> float | None:
        """Seconds left at the jobs' pace so far, None until there is one.

        The pace is jobs done per second since the first epoch was reported (a job's
        first seconds import torch and pty-chi), or since the first job started for
        jobs that report no epochs; a running job counts for its epochs over those it
        is expected to need (``expected_epochs``).
        """
        if self._pace is None:
            return None
        since, done_then = self._pace
        done, seconds = self._done() - done_then, self._clock() - since
        if done <= 0 or seconds < MIN_PACE_S:
            return None
        left = self.total - len(self.finished) - self.running_work()
        return left * seconds / done if left > 0 else None

    def _done(self) -> float:
        """Jobs' worth of reconstruction done: finished ones and running fractions."""
        return self._worked + self.running_work()
