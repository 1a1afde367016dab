"""A JSON document in a job's folder (e.g. ``metrics.json``), located by namespace."""

from __future__ import annotations

import json
import logging
from typing import Any

from kedro.io import AbstractDataset

from fly64_recon.datasets.atomic import set_aside, write_atomic
from fly64_recon.datasets.job_location import dumps, job_folder

logger = logging.getLogger(__name__)


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
        """The document, or ``{}`` when the file is not there or cannot be read (then
        set aside, renamed, with one warning: the node that writes it runs again)."""
        if not self._fs.exists(self._filepath):
            return {}
        try:
            document = json.loads(self._fs.cat_file(self._filepath).decode("utf-8"))
            if not isinstance(document, dict):
                raise ValueError(f"a JSON {type(document).__name__}, not an object")
        except ValueError as error:
            aside = set_aside(self._filepath, self._fs)
            logger.warning(
                "%s cannot be read (%s): moved to %s", self._filepath, error, aside
            )
            return {}
        return document

    def save(self, data: dict[str, Any]) -> None:
        """Write the document atomically (NumPy scalars become plain numbers)."""
        write_atomic(self._filepath, dumps(data).encode(), self._fs)

    def _exists(self) -> bool:
        return self._fs.exists(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
