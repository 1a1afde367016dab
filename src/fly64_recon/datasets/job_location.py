"""Where a job's files live: ``<path>/dose_10000/dense/test/`` for ``dose_1e4.dense.test``."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
from kedro.io.core import get_protocol_and_path

from fly64_recon.study import Job


def job_folder(
    path: str, namespace: str, fs_args: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the full path (protocol kept) of a job's folder under ``path``."""
    protocol, root = get_protocol_and_path(path)
    folder = str(PurePosixPath(root) / Job.from_namespace(namespace).output_relpath)
    full = folder if protocol == "file" else f"{protocol}://{folder}"
    return fsspec.filesystem(protocol, **(fs_args or {})), full


def dumps(data: Any) -> str:
    """JSON for a job's records: NumPy scalars and arrays become plain numbers and lists."""
    return json.dumps(data, indent=2, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
