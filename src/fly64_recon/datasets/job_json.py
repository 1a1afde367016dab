"""A JSON document in a job's folder (e.g. ``metrics.json``), located by namespace."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_protocol_and_path

from fly64_recon.datasets.atomic import write_atomic
from fly64_recon.study import Job


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
        protocol, root = get_protocol_and_path(path)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(fs_args or {}))
        folder = PurePosixPath(root) / Job.from_namespace(namespace).output_relpath
        path_ = str(folder / file)
        self._filepath = path_ if protocol == "file" else f"{protocol}://{path_}"
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
        text = json.dumps(data, indent=2, default=_jsonable)
        write_atomic(self._filepath, text.encode(), self._fs)

    def _exists(self) -> bool:
        return self._fs.exists(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
