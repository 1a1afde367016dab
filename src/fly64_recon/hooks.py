"""Project hooks: study progress, and the run's verdict once every job has had its turn."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

logger = logging.getLogger(__name__)

JOB_NODE = "reconstruct"
RECORD_OUTPUT = "manifest_entry"


class JobsFailedError(RuntimeError):
    """At least one reconstruction job failed; the others ran to the end."""


class StudyRunHooks:
    """Log 'job k of n' and make the run fail at the end when any job failed."""

    def __init__(self) -> None:
        self._total = 0
        self._started = 0
        self._failed: dict[str, str] = {}

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        self._total = sum(1 for node in pipeline.nodes if _is_job(node))
        self._started = 0
        self._failed = {}

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        if _is_job(node):
            self._started += 1
            logger.info("job %d of %d: %s", self._started, self._total, node.namespace)

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        for name, entry in outputs.items():
            if name.endswith(RECORD_OUTPUT) and entry.get("status") == "failed":
                self._failed[entry["namespace"]] = entry.get("reason") or "no reason"

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._failed:
            lines = "\n".join(f"  - {ns}: {why}" for ns, why in self._failed.items())
            raise JobsFailedError(
                f"{len(self._failed)} of {self._total} reconstruction job(s) failed "
                f"(the others ran; see the manifest):\n{lines}"
            )


def _is_job(node: Node) -> bool:
    return node.name.rsplit(".", 1)[-1] == JOB_NODE
