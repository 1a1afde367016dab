"""Project hooks: the study's console (progress, log file, closing summary) and the run's
verdict once every job has had its turn.

A job is a node tagged ``record.JOB_TAG``; a job's outcome is any ``JobRecord`` that a
node returns, an ingested scan any ``StudyFiles``. The hooks know no pipeline by its node or dataset names.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

from fly64_recon.display.console import RunPaths, StudyRun
from fly64_recon.record import JOB_TAG, JobRecord
from fly64_recon.study import StudyFiles

logger = logging.getLogger(__name__)


class JobsFailedError(RuntimeError):
    """At least one reconstruction job failed; the others ran to the end."""


# Errors that stopped a run after its traceback went to the run's log.
_stopped: list[BaseException] = []


def logged_stop(error: BaseException) -> bool:
    """Whether ``error`` stopped a run whose log already has its traceback."""
    return any(error is stopped for stopped in _stopped)


class StudyRunHooks:
    """Log 'job k of n', show the study's progress and summary, fail the run at the end
    when any job failed."""

    def __init__(self) -> None:
        self._paths: RunPaths | None = None
        self._run: StudyRun | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._paths = RunPaths.from_context(context)

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        jobs = [node.namespace for node in pipeline.nodes if JOB_TAG in node.tags]
        self._run = StudyRun(jobs, self._paths)
        self._run.open()

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        if JOB_TAG in node.tags and self._run is not None:
            k = self._run.job_started(node.namespace)
            logger.info("job %d of %d: %s", k, self._run.progress.total, node.namespace)

    @hook_impl
    def after_node_run(self, outputs: dict[str, Any]) -> None:
        if self._run is None:
            return
        for output in outputs.values():
            if isinstance(output, JobRecord):
                self._run.job_finished(output)
            elif isinstance(output, StudyFiles):
                self._run.ingested(output)

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        if self._run is not None:
            # The whole traceback to the run's log (INFO: not the console, where the
            # CLI says what stopped the run in one line: cli.py).
            logger.info("The run stopped:", exc_info=error)
            _stopped.append(error)
            self._run.close(error)
            self._run = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._run is None:
            return
        run, self._run = self._run, None
        run.close()
        failed = run.progress.failures()
        if failed:
            lines = "\n".join(f"  - {ns}: {why}" for ns, why in failed.items())
            raise JobsFailedError(
                f"{len(failed)} of {run.progress.total} reconstruction job(s) failed "
                f"(the others ran; see the manifest):\n{lines}"
            )
