"""One job's file of another reconstruction (a model), found from the model's path pattern.

The catalog factory names the file ``comparison__<model>__dose_<d>__<view>__<split>``
and hands every declared pattern over with Kedro's placeholders already filled in, so
``/data/pinn/dose_{dose}/{view}/{split}.npz`` arrives as
``/data/pinn/dose_10000/dense/test.npz``. A relative pattern starts at ``path`` (the
project root in the catalog). Loading never opens the file: a missing or broken file is
the comparison's to report, for that model and job only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from kedro.io import DatasetError
from kedro.io.core import get_protocol_and_path

from fly64_recon.datasets.npz import NPZSourceDataset


def model_filepath(path: str, pattern: str) -> str:
    """``pattern`` as is when absolute or remote, else under ``path``."""
    protocol, _ = get_protocol_and_path(pattern)
    if protocol != "file" or PurePosixPath(pattern).is_absolute():
        return pattern
    return str(PurePosixPath(path) / pattern)


class ModelSourceDataset(NPZSourceDataset):
    """A read-only NPZSource on the file of ``model`` among the declared ``models``."""

    def __init__(
        self,
        *,
        path: str,
        models: Mapping[str, str],
        model: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Point the handle at the file of ``model``, resolved from its pattern."""
        if model not in models:
            raise DatasetError(
                f"comparison model {model!r} is not declared: comparison_models in "
                f"globals has {sorted(models)}"
            )
        super().__init__(
            filepath=model_filepath(path, models[model]),
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
