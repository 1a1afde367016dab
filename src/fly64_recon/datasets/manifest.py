"""The study manifest: one entry per job of the design, each the job's record.

A job's record is saved as its entry (``<namespace>.manifest_entry`` after the job,
``<namespace>.manifest_metrics`` again with its metrics after its evaluation). A save
takes a file lock, reads the manifest, replaces that job's entry, fills jobs never run
as ``not_run``, recounts, and writes atomically; so a namespaced run keeps the other
jobs' entries and two runs on different namespaces at once both land.

A manifest is derived data: one that cannot be read (not UTF-8, not JSON, not a
manifest's shape) is set aside, renamed, with one warning, and rebuilt from the job
folders' ``job.json`` (the evaluation's headlines come back with its next run).
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
from fly64_recon.datasets.atomic import set_aside, write_text_atomic
from fly64_recon.datasets.job_folder import RECORD_FILE
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
        entry = self._jobs().get(self._namespace)
        if entry is None:
            raise DatasetError(f"{self._path}: no entry for job {self._namespace}")
        return entry

    def save(self, data: JobRecord) -> None:
        with FileLock(f"{self._path}.lock"):
            jobs = self._jobs()
            jobs[self._namespace] = {**self._blank(self._namespace), **data.to_dict()}
            manifest = build_manifest(self._design, jobs, self._path.parent)
            text = json.dumps(manifest, indent=2, sort_keys=False)
            write_text_atomic(str(self._path), text)
            summary = json.dumps(skip_summary(manifest), indent=2)
            write_text_atomic(str(self._path.parent / SKIP_SUMMARY_FILE), summary)

    def _jobs(self) -> dict[str, dict[str, Any]]:
        """The manifest's entries by namespace; rebuilt from the job folders when the
        manifest cannot be read."""
        manifest = read_manifest(self._path)
        if manifest is None:
            return rebuilt_entries(self._design, self._path.parent)
        return _jobs_by_namespace(manifest)

    def _blank(self, namespace: str) -> dict[str, Any]:
        return blank_entry(Job.from_namespace(namespace), self._path.parent)

    def _exists(self) -> bool:
        return self._namespace in self._jobs()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path), "namespace": self._namespace}


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path`` (``{}`` if there is none yet); None when it cannot be
    read, set aside with one warning."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        _check_shape(manifest)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        aside = set_aside(str(path))
        logger.warning(
            "%s cannot be read (%s): moved to %s and rebuilt from the job folders",
            path,
            error,
            aside,
        )
        return None
    return manifest


def _check_shape(manifest: Any) -> None:
    """A manifest is an object whose ``jobs`` is a list of entries with a namespace."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("jobs", []), list):
        raise ValueError("not a manifest: no list of jobs")
    for entry in manifest.get("jobs", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("namespace"), str):
            raise ValueError(f"an entry without a namespace: {str(entry)[:80]}")


def _jobs_by_namespace(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["namespace"]: job for job in manifest.get("jobs", [])}


def rebuilt_entries(design: StudyDesign, root: Path) -> dict[str, dict[str, Any]]:
    """The entries of the design's jobs whose folder holds a readable ``job.json``."""
    entries = {}
    for job in design.jobs():
        record = root / job.output_relpath / RECORD_FILE
        try:
            found = json.loads(record.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(found, dict) and found.get("namespace") == job.namespace:
            entries[job.namespace] = {**blank_entry(job, root), **found}
    return entries


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
