"""One reconstruction job's folder: ``ptychi_reconstruction.npz``, ``product.h5`` (the same
reconstruction as a ptychodus product, ``product.py``), ``ptychi.log``, ``job.json``.

The catalog names a job by its Kedro namespace (``dose_1e4.dense.test``); the folder is
``<path>/dose_10000/dense/test``. Every file is written atomically and the NPZ carries
its own provenance, so a file that exists is complete and says what it was made from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from fly64_recon.datasets.atomic import set_aside, write_atomic
from fly64_recon.datasets.job_location import dumps, job_folder
from fly64_recon.datasets.npz import NPZFormatError, npz_bytes, parse_npz
from fly64_recon.datasets.product import PRODUCT_FILE, Product, product_bytes

logger = logging.getLogger(__name__)

RECONSTRUCTION_FILE = "ptychi_reconstruction.npz"
LOG_FILE = "ptychi.log"
RECORD_FILE = "job.json"
PROVENANCE_KEY = "provenance"


@dataclass
class JobArtifacts:
    """What a job leaves on disk; ``arrays``/``log``/``product`` are None when nothing new
    was made (``product`` is never loaded back)."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray] | None = None
    log: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    product: Product | None = None


class JobFolderDataset(AbstractDataset[JobArtifacts, JobArtifacts]):
    """A job's artifact folder under ``path``, located by the job's namespace."""

    def __init__(
        self,
        *,
        path: str,
        namespace: str,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._fs, self.folder = job_folder(path, namespace, fs_args)
        self._namespace = namespace
        self.metadata = metadata

    def _file(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def load(self) -> JobArtifacts:
        """The folder as it is; missing files give an empty record / no arrays. A file
        that cannot be read is set aside, renamed, with one warning, and counts as
        missing: the job runs again rather than the study stopping."""
        record_path = self._file(RECORD_FILE)
        record: dict[str, Any] = {}
        if self._fs.exists(record_path):
            try:
                record = json.loads(self._fs.cat_file(record_path).decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not a record")
            except ValueError as error:
                self._set_aside(record_path, error)
                record = {}
        arrays = None
        provenance: dict[str, Any] = {}
        npz_path = self._file(RECONSTRUCTION_FILE)
        if self._fs.exists(npz_path):
            try:
                arrays = parse_npz(self._fs.cat_file(npz_path), npz_path)
                provenance = json.loads(str(arrays.pop(PROVENANCE_KEY, "{}")))
            except (NPZFormatError, ValueError) as error:
                self._set_aside(npz_path, error)
                arrays, provenance = None, {}
        return JobArtifacts(record=record, arrays=arrays, provenance=provenance)

    def _set_aside(self, path: str, error: Exception) -> None:
        aside = set_aside(path, self._fs)
        logger.warning(
            "%s cannot be read (%s): moved to %s; the job runs again",
            path,
            str(error).splitlines()[0],
            aside,
        )

    def save(self, data: JobArtifacts) -> None:
        """Write what the job made, then its record (last, so it never runs ahead)."""
        if data.arrays is not None:
            arrays = dict(data.arrays)
            arrays[PROVENANCE_KEY] = np.array(
                json.dumps(data.provenance, sort_keys=True)
            )
            write_atomic(self._file(RECONSTRUCTION_FILE), npz_bytes(arrays), self._fs)
        if data.product is not None:
            write_atomic(
                self._file(PRODUCT_FILE), product_bytes(data.product), self._fs
            )
        if data.log is not None:
            write_atomic(self._file(LOG_FILE), data.log.encode(), self._fs)
        write_atomic(self._file(RECORD_FILE), dumps(data.record).encode(), self._fs)

    def _exists(self) -> bool:
        return self._fs.exists(self._file(RECORD_FILE))

    def _describe(self) -> dict[str, Any]:
        return {"folder": self.folder, "namespace": self._namespace}
