"""The ``ptychi_baseline`` parameters as one typed, validated object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import version
from typing import Any

OBJECT_INITS = ("flat", "ground_truth")


@dataclass(frozen=True)
class BaselineOptions:
    """How every job reconstructs; ``lsqml`` mirrors pty-chi's ``LSQMLOptions`` tree."""

    device: str = "auto"
    cpu_threads: int | None = None
    strict: bool = False
    dry_run: bool = False
    object_init: str = "flat"
    max_patterns: int | None = None
    subsample_seed: int = 456
    lsqml: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.object_init not in OBJECT_INITS:
            raise ValueError(
                f"ptychi_baseline.object_init must be one of {OBJECT_INITS}, "
                f"got {self.object_init!r}"
            )
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(
                f"ptychi_baseline.cpu_threads must be >= 1 or null, "
                f"got {self.cpu_threads!r}"
            )
        if self.max_patterns is not None and self.max_patterns < 1:
            raise ValueError(
                f"ptychi_baseline.max_patterns must be >= 1 or null, "
                f"got {self.max_patterns!r}"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BaselineOptions:
        """The ``ptychi_baseline`` parameters, checked; pty-chi checks ``lsqml`` later."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"ptychi_baseline: unknown parameter(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**params)

    def fingerprint(self) -> str:
        """Hash of everything that changes a reconstruction (not where it runs)."""
        relevant = {
            "lsqml": self.lsqml,
            "object_init": self.object_init,
            "max_patterns": self.max_patterns,
            "subsample_seed": self.subsample_seed,
            "ptychi": version("ptychi"),
        }
        canonical = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()
