"""The study manifest: one entry per job of the design, each the job's record.

A job's record is saved as its entry (``<namespace>.manifest_entry`` after the job,
``<namespace>.manifest_metrics`` again with its metrics after its evaluation). A save
takes a file lock, reads the manifest, replaces that job's entry, fills jobs never run
as ``not_run``, recounts, and writes atomically; so a namespaced run keeps the other
jobs' entries and two runs on different namespaces at once both land.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from filelock import FileLock
from kedro.io import AbstractDataset, DatasetError

from fly64_recon.config import pipeline_design
from fly64_recon.datasets.atomic import write_text_atomic
from fly64_recon.record import OUTCOMES, JobRecord, JobStatus, job_fields
from fly64_recon.study import Job, StudyDesign

logger = logging.getLogger(__name__)

SKIP_SUMMARY_FILE = "skip_summary.json"


class ManifestEntryDataset(AbstractDataset[JobRecord, dict[str, Any]]):
    """One job's entry in ``reconstruction_manifest.json`` (local filesystem).

    Saves a job's record; loads the entry as written (the record and ``output_dir``).
    """

    def __init__(
        self,
        *,
        filepath: str,
        namespace: str,
        study: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """``study``: the design's parameters; by default the one the pipelines are
        built from (``config.pipeline_design``: globals.yml, ``--params`` included),
        read when the catalog makes this dataset, in the ``kedro run`` process."""
        self._path = Path(filepath)
        self._namespace = namespace
        self._design = (
            pipeline_design().study if study is None else StudyDesign.from_params(study)
        )
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        entry = _jobs_by_namespace(read_manifest(self._path)).get(self._namespace)
        if entry is None:
            raise DatasetError(f"{self._path}: no entry for job {self._namespace}")
        return entry

    def save(self, data: JobRecord) -> None:
        with FileLock(f"{self._path}.lock"):
            jobs = _jobs_by_namespace(read_manifest(self._path))
            jobs[self._namespace] = {**self._blank(self._namespace), **data.to_dict()}
            manifest = build_manifest(self._design, jobs, self._path.parent)
            text = json.dumps(manifest, indent=2, sort_keys=False)
            write_text_atomic(str(self._path), text)
            summary = json.dumps(skip_summary(manifest), indent=2)
            write_text_atomic(str(self._path.parent / SKIP_SUMMARY_FILE), summary)

    def _blank(self, namespace: str) -> dict[str, Any]:
        return blank_entry(Job.from_namespace(namespace), self._path.parent)

    def _exists(self) -> bool:
        return self._namespace in _jobs_by_namespace(read_manifest(self._path))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path), "namespace": self._namespace}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``; ``{}`` if there is none yet.

    A manifest is derived data: one that cannot be parsed is set aside with a warning
    rather than blocking the run that would rewrite it.
    """
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        aside = path.with_suffix(".corrupt.json")
        path.replace(aside)
        logger.warning("%s is not valid JSON (%s); moved to %s", path, error, aside)
        return {}


def _jobs_by_namespace(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["namespace"]: job for job in manifest.get("jobs", [])}


def blank_entry(job: Job, artifact_root: Path) -> dict[str, Any]:
    """The entry of a job of the design that has not run."""
    return {
        **job_fields(job),
        "output_dir": str(artifact_root / job.output_relpath),
        "status": JobStatus.NOT_RUN.value,
        "reason": None,
    }


def build_manifest(
    design: StudyDesign, jobs: dict[str, dict[str, Any]], artifact_root: Path
) -> dict[str, Any]:
    """Every job of the design (then any others on record), with counts and versions."""
    ordered = [
        jobs.get(job.namespace) or blank_entry(job, artifact_root)
        for job in design.jobs()
    ]
    design_names = {job.namespace for job in design.jobs()}
    ordered += [
        entry for name, entry in sorted(jobs.items()) if name not in design_names
    ]
    counts = Counter(entry["status"] for entry in ordered)
    return {
        "total_jobs": len(ordered),
        "counts": {status.value: counts[status] for status in OUTCOMES},
        "versions": _versions(),
        "jobs": ordered,
    }


def skip_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The skipped jobs of a manifest, with their reasons."""
    skipped = [
        {"namespace": job["namespace"], "reason": job.get("reason")}
        for job in manifest["jobs"]
        if job["status"] == JobStatus.SKIPPED
    ]
    return {"skipped_count": len(skipped), "skipped_jobs": skipped}


def _versions() -> dict[str, str | None]:
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: installed(name) for name in ("fly64_recon", "ptychi", "torch")}
