"""Project hooks: study progress, and the run's verdict once every job has had its turn.

A job is a node tagged ``record.JOB_TAG``; a job's outcome is any ``JobRecord`` that a
node returns. The hooks know no pipeline by its node or dataset names.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

from fly64_recon.record import JOB_TAG, JobRecord, JobStatus

logger = logging.getLogger(__name__)


class JobsFailedError(RuntimeError):
    """At least one reconstruction job failed; the others ran to the end."""


class StudyRunHooks:
    """Log 'job k of n' and make the run fail at the end when any job failed."""

    def __init__(self) -> None:
        self._jobs: set[str] = set()
        self._total = 0
        self._started = 0
        self._failed: dict[str, str] = {}

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        jobs = [node for node in pipeline.nodes if JOB_TAG in node.tags]
        self._jobs = {node.namespace for node in jobs}
        self._total = len(jobs)
        self._started = 0
        self._failed = {}

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        if JOB_TAG in node.tags:
            self._started += 1
            logger.info("job %d of %d: %s", self._started, self._total, node.namespace)

    @hook_impl
    def after_node_run(self, outputs: dict[str, Any]) -> None:
        for record in outputs.values():
            # Only the jobs this run ran: an evaluation alone rewrites failed records.
            if (
                isinstance(record, JobRecord)
                and record.status is JobStatus.FAILED
                and record.namespace in self._jobs
            ):
                self._failed[record.namespace] = record.reason or "no reason"

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._failed:
            lines = "\n".join(f"  - {ns}: {why}" for ns, why in self._failed.items())
            raise JobsFailedError(
                f"{len(self._failed)} of {self._total} reconstruction job(s) failed "
                f"(the others ran; see the manifest):\n{lines}"
            )
