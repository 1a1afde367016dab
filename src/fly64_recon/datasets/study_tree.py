"""A DATA-001 study tree written whole: one NPZ per job's input, where the catalog's
``phase_c__`` and ``phase_d__`` entries read them.

The ingest pipeline learns its scan's dose (the tree's folder) only from the data, so
it cannot name the per-file catalog entries when the pipeline is built; it saves the
files of every (dose, view, split) through this one dataset instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from fly64_recon.datasets.npz import NPZDataset
from fly64_recon.study import Job, StudyFiles


class StudyTreeDataset(AbstractDataset[StudyFiles, None]):
    """Saves a :class:`StudyFiles`' arrays under ``phase_c_root`` (the baseline view) and
    ``phase_d_root`` (the others), each file atomically, at ``job.input_relpath``."""

    def __init__(self, phase_c_root: str, phase_d_root: str) -> None:
        self._roots = {"c": Path(phase_c_root), "d": Path(phase_d_root)}

    def _describe(self) -> dict[str, Any]:
        return {name: str(root) for name, root in self._roots.items()}

    def path(self, job: Job) -> Path:
        root = self._roots["c" if job.view == "baseline" else "d"]
        return root / job.input_relpath

    def save(self, data: StudyFiles) -> None:
        for job, arrays in data.files.items():
            NPZDataset(filepath=str(self.path(job))).save(arrays)

    def load(self) -> None:
        raise DatasetError(
            "StudyTreeDataset is written, not read: the catalog's phase_c__ and "
            "phase_d__ entries read its files"
        )
