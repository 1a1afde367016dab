"""The ``ptychi_baseline`` parameters as one typed, validated object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib.metadata import version
from typing import Any

from fly64_recon.pipelines.ptychi_baseline import engines
from fly64_recon.science.convergence import Convergence

OBJECT_INITS = ("flat", "ground_truth")
HALF_DATASET_CHOICES = ("auto", True, False)


@dataclass(frozen=True)
class BaselineOptions:
    """How every job reconstructs: conf/base/parameters_ptychi_baseline.yml, where every
    default lives (this class has none of its own; a missing key is an error).

    ``engine`` names one of pty-chi's engines (``engines.ENGINES``); each engine's
    options are under its own key (``lsqml``, ``epie``, ...: the registry's), which
    mirrors that engine's pty-chi options tree; only the chosen engine's are read.
    """

    device: str  # auto, cpu, cuda, cuda:N
    cpu_threads: int | None  # None: the runner's share of the cores
    strict: bool
    dry_run: bool
    object_init: str
    max_patterns: int | None
    subsample_seed: int
    # Which rule stops a job and its settings (science.convergence.Convergence); the
    # engine's ``num_epochs`` is the cap (``gpu_epoch_cap`` on a GPU).
    convergence: Mapping[str, Any]
    # Two more reconstructions from interleaved halves, for the half-dataset FRC:
    # auto (when the data have no ground truth), true or false.
    half_dataset_frc: str | bool
    # The lit pixels of a scan (fly64_recon.science.beam): its photons per unit area.
    illumination_fraction: float
    engine: str
    # The starting probe: the given one plus orthogonal modes, this many in all.
    probe_modes: int
    # Each engine's pty-chi options, by the engine's key.
    engine_options: Mapping[str, Mapping[str, Any]]

    def __post_init__(self) -> None:
        engines.engine_named(self.engine)
        if isinstance(self.probe_modes, bool) or not (
            isinstance(self.probe_modes, int) and self.probe_modes >= 1
        ):
            raise ValueError(
                f"ptychi_baseline.probe_modes must be a whole number >= 1, "
                f"got {self.probe_modes!r}"
            )
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
        self.convergence_options()  # its checks name a bad convergence parameter

    def convergence_options(self) -> Convergence:
        """The convergence parameters, checked: an unknown or missing one is named."""
        known = {f.name for f in fields(Convergence)}
        unknown = sorted(set(self.convergence) - known)
        missing = sorted(known - set(self.convergence))
        if unknown or missing:
            raise ValueError(
                "ptychi_baseline.convergence: "
                + "; ".join(
                    [f"unknown parameter(s) {unknown}"] * bool(unknown)
                    + [f"missing parameter(s) {missing}"] * bool(missing)
                )
                + f"; known: {sorted(known)}"
            )
        return Convergence(**self.convergence)

    def half_dataset(self, has_ground_truth: bool) -> bool:
        """Whether a job on data with (or without) a ground truth makes the halves."""
        if self.half_dataset_frc == "auto":
            return not has_ground_truth
        return bool(self.half_dataset_frc)

    @property
    def engine_spec(self) -> engines.Engine:
        """The chosen engine."""
        return engines.ENGINES[self.engine]

    @property
    def engine_params(self) -> Mapping[str, Any]:
        """The chosen engine's options, as the parameters give them."""
        return self.engine_options.get(self.engine_spec.key) or {}

    def ptychi_options(self, device: str) -> Any:
        """The chosen engine's pty-chi options for ``device``, checked: an option it
        does not have, a bad value or something it cannot do is an ``OptionsError``."""
        engine = self.engine_spec
        options = engines.build_options(engine, self.engine_params, device)
        engines.check_options(engine, self.engine_params, options)
        return options

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BaselineOptions:
        """The ``ptychi_baseline`` parameters, checked, the engine's options by pty-chi
        too: every job's validation refuses them before any job reconstructs."""
        keys = {engine.key for engine in engines.ENGINES.values()}
        given = {name: value for name, value in params.items() if name not in keys}
        expected = {f.name for f in fields(cls)} - {"engine_options"}
        unknown, missing = sorted(set(given) - expected), sorted(expected - set(given))
        if unknown or missing:
            raise ValueError(
                "ptychi_baseline: "
                + "; ".join(
                    [f"unknown parameter(s) {unknown}"] * bool(unknown)
                    + [f"missing parameter(s) {missing}"] * bool(missing)
                )
                + f"; expected {sorted(expected)} and the engines' keys {sorted(keys)}"
            )
        engine_options = {name: params[name] or {} for name in params if name in keys}
        options = cls(**given, engine_options=engine_options)
        options.ptychi_options("cpu")
        return options

    def fingerprint(self, device_kind: str) -> str:
        """Hash of everything that changes a reconstruction, the kind of device it runs
        on included (``devices.device_kind``: pty-chi draws its batches from a generator
        on the device, so a CPU and a GPU run differ), not which GPU."""
        relevant = {
            "device": device_kind,
            "engine": self.engine,
            "engine_options": self.engine_params,
            "probe_modes": self.probe_modes,
            "object_init": self.object_init,
            "max_patterns": self.max_patterns,
            "subsample_seed": self.subsample_seed,
            "convergence": self.convergence,
            "half_dataset_frc": self.half_dataset_frc,
            "ptychi": version("ptychi"),
        }
        canonical = json.dumps(relevant, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()
