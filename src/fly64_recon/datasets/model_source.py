"""One job's file of another reconstruction (a model), found from the model's declaration.

A model is declared (``comparison_models`` in globals) by its path pattern, or by a
mapping of the pattern (``path``) and the keys its files hold the object under: one
complex ``object_key`` (``ptychopinn_complex`` in PtychoPINN's ``reconstructions.npz``,
``YY_pred``), and/or an ``amplitude_key`` and ``phase_key`` pair; by default
``reconstructed_object``, then ``amplitude`` and ``phase``. So a file is read as its
producer wrote it, without conversion.

The catalog factory names the file ``comparison__<model>__dose_<d>__<view>__<split>``
and hands every declaration over with Kedro's placeholders already filled in, so
``/data/pinn/dose_{dose}/{view}/{split}.npz`` arrives as
``/data/pinn/dose_10000/dense/test.npz``. A relative pattern starts at ``path`` (the
project root in the catalog). Loading never opens the file: a missing or broken file is
the comparison's to report, for that model and job only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from kedro.io import DatasetError
from kedro.io.core import get_protocol_and_path

from fly64_recon.datasets.npz import NPZSource, NPZSourceDataset

# A declaration's keys: the pattern, and where the object is in the files.
DECLARED_KEYS = ("path", "object_key", "amplitude_key", "phase_key")


@dataclass(frozen=True)
class ObjectKeys:
    """Where a model's file holds its object: one complex key, else an amplitude and a
    phase key."""

    object: str = "reconstructed_object"
    amplitude: str = "amplitude"
    phase: str = "phase"

    @classmethod
    def declared(cls, declaration: str | Mapping[str, str]) -> ObjectKeys:
        """The keys of a declaration (a bare pattern: the defaults)."""
        if isinstance(declaration, str):
            return cls()
        given = {
            name: declaration[f"{name}_key"]
            for name in ("object", "amplitude", "phase")
            if f"{name}_key" in declaration
        }
        return cls(**given)


def declared_pattern(declaration: str | Mapping[str, str]) -> str:
    """A declaration's path pattern."""
    return declaration if isinstance(declaration, str) else declaration["path"]


@dataclass(frozen=True)
class ModelSource(NPZSource):
    """A model's file for one job, and where in it the object is."""

    keys: ObjectKeys = field(default_factory=ObjectKeys)


def model_filepath(path: str, pattern: str) -> str:
    """``pattern`` as is when absolute or remote, else under ``path``."""
    protocol, _ = get_protocol_and_path(pattern)
    if protocol != "file" or PurePosixPath(pattern).is_absolute():
        return pattern
    return str(PurePosixPath(path) / pattern)


class ModelSourceDataset(NPZSourceDataset):
    """A read-only ``ModelSource`` on the file of ``model`` among the declared ``models``."""

    def __init__(
        self,
        *,
        path: str,
        models: Mapping[str, str | Mapping[str, str]],
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
            filepath=model_filepath(path, declared_pattern(models[model])),
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._keys = ObjectKeys.declared(models[model])

    def load(self) -> ModelSource:
        """The handle and the declared keys, without touching the file."""
        source = super().load()
        return ModelSource(source.path, source.storage_options, self._keys)
