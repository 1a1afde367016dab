"""The study design: doses, views, splits, and the names of everything derived from them.

This module imports nothing of the project: pipelines, datasets and the CLI all name
jobs, namespaces and folders through it, so there is one naming rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VIEWS = ("baseline", "dense", "sparse")
SPLITS = ("train", "test")
PHASE_D_VIEWS = ("dense", "sparse")


class StudyDesignError(ValueError):
    """The study parameters describe no valid study."""


def dose_label(dose: float) -> str:
    """Name a dose for a Kedro namespace: 1e4 -> ``1e4``, 2500 -> ``2p5e3``.

    Kedro reserves ``.`` for namespace nesting, so the mantissa's point becomes ``p``
    and a negative exponent's sign becomes ``m``.
    """
    _check_dose(dose)
    mantissa, exponent = f"{dose:.15e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".").replace(".", "p")
    return f"{mantissa}e{int(exponent)}".replace("-", "m")


def parse_dose_label(label: str) -> float:
    """Inverse of :func:`dose_label`: ``2p5e3`` -> 2500.0."""
    return float(label.replace("p", ".").replace("m", "-"))


def dose_namespace(dose: float) -> str:
    """The Kedro namespace of a dose: 1e4 -> ``dose_1e4``."""
    return f"dose_{dose_label(dose)}"


def dose_dirname(dose: float) -> str:
    """The study-tree folder of a dose: 1e4 -> ``dose_10000``; 0.5 -> ``dose_0p5``."""
    _check_dose(dose)
    if float(dose).is_integer():
        return f"dose_{int(dose)}"
    return f"dose_{dose:g}".replace(".", "p").replace("-", "m")


def _check_dose(dose: float) -> None:
    if isinstance(dose, bool) or not isinstance(dose, int | float):
        raise StudyDesignError(f"dose must be a number, got {dose!r}")
    if not math.isfinite(dose) or dose <= 0:
        raise StudyDesignError(f"dose must be a positive finite number, got {dose!r}")


@dataclass(frozen=True)
class Job:
    """One reconstruction job: one (dose, view, split) of the study."""

    dose: float
    view: str
    split: str

    @property
    def namespace(self) -> str:
        """``dose_1e4.dense.test``."""
        return f"{dose_namespace(self.dose)}.{self.view}.{self.split}"

    @property
    def dose_dir(self) -> str:
        return dose_dirname(self.dose)

    @property
    def input_dataset(self) -> str:
        """The catalog name (without transcoding) of this job's input NPZ.

        ``__`` separates the parts: Kedro reserves ``.`` for namespaces.
        """
        if self.view == "baseline":
            return f"phase_c__{self.dose_dir}__patched_{self.split}"
        return f"phase_d__{self.dose_dir}__{self.view}__{self.view}_{self.split}"

    @property
    def input_relpath(self) -> str:
        """The input NPZ relative to its phase root."""
        if self.view == "baseline":
            return f"{self.dose_dir}/patched_{self.split}.npz"
        return f"{self.dose_dir}/{self.view}/{self.view}_{self.split}.npz"

    @property
    def output_relpath(self) -> str:
        """The job's artifact folder relative to the artifact root."""
        return f"{self.dose_dir}/{self.view}/{self.split}"

    @classmethod
    def from_namespace(cls, namespace: str) -> Job:
        """The job of ``dose_1e4.dense.test``."""
        try:
            dose_ns, view, split = namespace.split(".")
            if not dose_ns.startswith("dose_"):
                raise ValueError
            dose = parse_dose_label(dose_ns.removeprefix("dose_"))
        except ValueError:
            raise StudyDesignError(
                f"namespace {namespace!r} is not of the form dose_<d>.<view>.<split>"
            ) from None
        if view not in VIEWS or split not in SPLITS:
            raise StudyDesignError(f"namespace {namespace!r}: unknown view or split")
        return cls(dose, view, split)


@dataclass(frozen=True)
class StudyFiles:
    """The input files of one dose's jobs, made from ``source`` (a measured scan the
    ingest pipeline read): DATA-001 arrays by the job that reads them."""

    dose: float
    source: str
    files: Mapping[Job, Mapping[str, Any]]

    @property
    def n_patterns(self) -> int:
        """The patterns of the scan: those of its baseline view's splits."""
        return sum(
            len(arrays["xcoords"])
            for job, arrays in self.files.items()
            if job.view == "baseline"
        )


@dataclass(frozen=True)
class StudyDesign:
    """Doses x views x splits, with the overlap fraction of each Phase D view (given by
    ``study.overlap`` in globals.yml: the design carries no number of its own)."""

    doses: tuple[float, ...]
    views: tuple[str, ...] = VIEWS
    splits: tuple[str, ...] = SPLITS
    overlap: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.doses:
            raise StudyDesignError("study.doses is empty: give at least one dose")
        for dose in self.doses:
            _check_dose(dose)
        labels = [dose_label(d) for d in self.doses]
        if len(set(labels)) != len(labels):
            raise StudyDesignError(f"study.doses has duplicates: {list(self.doses)}")
        for view in self.views:
            if view not in VIEWS:
                raise StudyDesignError(
                    f"study.views: unknown view {view!r}; known views are {VIEWS}"
                )
        for split in self.splits:
            if split not in SPLITS:
                raise StudyDesignError(
                    f"study.splits: unknown split {split!r}; known splits are {SPLITS}"
                )
        for view, fraction in self.overlap.items():
            if view not in PHASE_D_VIEWS:
                raise StudyDesignError(
                    f"study.overlap: unknown view {view!r}; overlap views are "
                    f"{PHASE_D_VIEWS}"
                )
            if not 0 <= fraction < 1:
                raise StudyDesignError(
                    f"study.overlap.{view} must be in [0, 1), got {fraction!r}"
                )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> StudyDesign:
        """Build from the ``study`` parameters (doses, views, splits, overlap)."""
        return cls(
            doses=tuple(float(d) for d in params["doses"]),
            views=tuple(params.get("views", VIEWS)),
            splits=tuple(params.get("splits", SPLITS)),
            overlap=dict(params.get("overlap") or {}),
        )

    @property
    def phase_d_views(self) -> tuple[str, ...]:
        return tuple(v for v in self.views if v in PHASE_D_VIEWS)

    def overlap_of(self, view: str) -> float:
        """The overlap fraction of a Phase D view, or an error naming what is missing."""
        if view not in self.overlap:
            raise StudyDesignError(
                f"study.overlap has no fraction for {view!r} (globals.yml: "
                f"study.overlap.{view})"
            )
        return self.overlap[view]

    def jobs(self) -> list[Job]:
        """Every job of the design, dose-major."""
        return [
            Job(float(dose), view, split)
            for dose in self.doses
            for view in self.views
            for split in self.splits
        ]


def spacing_threshold(overlap_fraction: float, patch_size: int) -> float:
    """Minimum scan-position spacing of a view: (1 - f) * N pixels."""
    if not 0 <= overlap_fraction < 1:
        raise StudyDesignError(
            f"overlap fraction must be in [0, 1), got {overlap_fraction!r}"
        )
    return (1.0 - overlap_fraction) * patch_size
