"""A JSON document in a job's folder (e.g. ``metrics.json``), located by namespace."""

from __future__ import annotations

import json
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from fly64_recon.datasets.atomic import write_atomic
from fly64_recon.datasets.job_location import dumps, job_folder


class JobJSONDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """``<path>/<job folder>/<file>`` for the job of ``namespace``.

    A missing file loads as ``{}``, like a missing record in ``JobFolderDataset``: a
    job that never ran is the consumer's to report, not a reason to stop a study.
    """

    def __init__(
        self,
        *,
        path: str,
        namespace: str,
        file: str,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._fs, folder = job_folder(path, namespace, fs_args)
        self._filepath = f"{folder}/{file}"
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        """The document, or ``{}`` when the file is not there."""
        if not self._fs.exists(self._filepath):
            return {}
        try:
            return json.loads(self._fs.cat_file(self._filepath))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{self._filepath}: not valid JSON ({error})") from None

    def save(self, data: dict[str, Any]) -> None:
        """Write the document atomically (NumPy scalars become plain numbers)."""
        write_atomic(self._filepath, dumps(data).encode(), self._fs)

    def _exists(self) -> bool:
        return self._fs.exists(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
