"""The ``ptychi_baseline`` parameters as one typed, validated object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib.metadata import version
from typing import Any

from fly64_recon.convergence import StoppingRule

OBJECT_INITS = ("flat", "ground_truth")
HALF_DATASET_CHOICES = ("auto", True, False)


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
    # Stop when the loss improved by less than ``tolerance`` over ``window`` epochs;
    # ``lsqml.reconstructor_options.num_epochs`` stays the cap.
    convergence: Mapping[str, Any] = field(default_factory=dict)
    # Two more reconstructions from interleaved halves, for the half-dataset FRC:
    # auto (when the data have no ground truth), true or false.
    half_dataset_frc: str | bool = "auto"
    # The lit pixels of a scan (fly64_recon.beam): its photons per unit area.
    illumination_fraction: float = 0.1
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
        if self.half_dataset_frc not in HALF_DATASET_CHOICES:
            raise ValueError(
                f"ptychi_baseline.half_dataset_frc must be auto, true or false, "
                f"got {self.half_dataset_frc!r}"
            )
        if not 0 < self.illumination_fraction < 1:
            raise ValueError(
                f"ptychi_baseline.illumination_fraction must be in (0, 1), "
                f"got {self.illumination_fraction!r}"
            )
        self.stopping_rule()  # its checks name a bad convergence parameter

    def stopping_rule(self) -> StoppingRule:
        """The convergence parameters as a rule."""
        unknown = sorted(set(self.convergence) - {"window", "tolerance"})
        if unknown:
            raise ValueError(
                f"ptychi_baseline.convergence: unknown parameter(s) {unknown}; "
                "known: ['tolerance', 'window']"
            )
        return StoppingRule(**self.convergence)

    def half_dataset(self, has_ground_truth: bool) -> bool:
        """Whether a job on data with (or without) a ground truth makes the halves."""
        if self.half_dataset_frc == "auto":
            return not has_ground_truth
        return bool(self.half_dataset_frc)

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
            "convergence": self.convergence,
            "half_dataset_frc": self.half_dataset_frc,
            "ptychi": version("ptychi"),
        }
        canonical = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()
