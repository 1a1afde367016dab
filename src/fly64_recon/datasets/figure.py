"""A matplotlib figure saved as PNG into a job's folder, atomically."""

from __future__ import annotations

import io
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from matplotlib.figure import Figure

from fly64_recon.datasets.atomic import write_atomic
from fly64_recon.datasets.job_location import job_folder


class JobFigureDataset(AbstractDataset[Figure, None]):
    """``<path>/<job folder>/<file>`` for the job of ``namespace``; write-only."""

    def __init__(
        self,
        *,
        path: str,
        namespace: str,
        file: str,
        dpi: int = 100,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._fs, folder = job_folder(path, namespace)
        self._filepath = f"{folder}/{file}"
        self._dpi = dpi
        self.metadata = metadata

    def load(self) -> None:
        raise DatasetError(f"{self._filepath}: a figure is written, not read back")

    def save(self, data: Figure) -> None:
        buffer = io.BytesIO()
        data.savefig(buffer, format="png", dpi=self._dpi)
        write_atomic(self._filepath, buffer.getvalue(), self._fs)

    def _exists(self) -> bool:
        return self._fs.exists(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "dpi": self._dpi}
