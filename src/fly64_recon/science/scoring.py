"""The one layer that scores a reconstruction of a job: on its lit pixels, against its
ground truth, beside what it is measured against.

The evaluation scores the pty-chi reconstruction with it (and adds what only the
baseline has: data fit, convergence, half-dataset FRC, positions); the comparison scores
every other model with it and reads the pty-chi score from the evaluation. A score
(``score``) is a dict, the same in ``metrics.json`` and in ``comparison.json``:
``status`` (``ScoreStatus``) and ``reason``; when scored, ``amplitude`` and ``phase``
(every metric of ``metrics.METRICS``), ``null`` (the same for a flat object on the same
pixels), ``noise_floor`` (the phase's shot-noise floor), ``alignment``,
``frc_curves``, ``coverage`` (the part of the lit pixels scored) and ``flags`` (what
makes the numbers doubtful, in words). Its tidy rows (``score_rows``) are the CSVs'.

The footing, from the members of a job's input file (DATA-001):

- mask: ``fly64_recon.science.beam.illumination_mask`` of the input's ``probeGuess`` summed over
  the positions of the patterns the job used (``pattern_index``; all when None);
- photons per pattern: the mean over those patterns of ``sum((diffraction * s) ** 2)``,
  with ``s`` the ``intensity_scale`` of ``_metadata`` (1 when absent);
- noise floor: ``fly64_recon.science.beam.phase_noise_floor`` of the photons per pixel;
- ground truth: none when ``_metadata`` says ``ground_truth: false`` or objectGuess is
  flat (measured data carry a flat start, not an object).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fly64_recon.contract import read_metadata
from fly64_recon.record import JobRecord, ScoreStatus
from fly64_recon.science import beam
from fly64_recon.science import metrics as m

TRUTH_MEMBERS = (
    "objectGuess",
    "probeGuess",
    "xcoords",
    "ycoords",
    "xcoords_true",  # optional: only files whose positions carry an error have them
    "ycoords_true",
    "diffraction",
    "_metadata",
)
PHOTON_CHUNK = 256  # patterns summed at a time: bounds the float64 working copy
# An objectGuess this flat (amplitude and phase) is no ground truth: measured data.
FLAT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Footing:
    """A job's lit pixels and the photons each object pixel received."""

    mask: np.ndarray
    photons: np.ndarray
    photons_per_pattern: float

    def noise_floor(self, mask: np.ndarray | None = None) -> dict[str, float]:
        """Shot-noise floor of the phase MAE and MSE over ``mask`` (default: all lit)."""
        return beam.phase_noise_floor(self.photons, self.mask if mask is None else mask)


def has_ground_truth(
    members: Mapping[str, np.ndarray], tolerance: float = FLAT_TOLERANCE
) -> bool:
    """False for measured data: ``_metadata`` says so, or objectGuess is flat."""
    if read_metadata(members).get("ground_truth", True) is False:
        return False
    truth = members["objectGuess"]
    return not (
        np.ptp(np.abs(truth)) <= tolerance and np.ptp(np.angle(truth)) <= tolerance
    )


def job_footing(
    members: Mapping[str, np.ndarray],
    pattern_index: np.ndarray | None,
    fraction: float,
) -> Footing:
    """The mask and photon map of the patterns a job used, from its input file."""
    rows = slice(None) if pattern_index is None else np.asarray(pattern_index)
    probe = members["probeGuess"]
    lit = beam.illumination(
        probe,
        members["xcoords"][rows],
        members["ycoords"][rows],
        members["objectGuess"].shape,
    )
    scale = float(read_metadata(members).get("intensity_scale", 1.0))
    per_pattern = photons_per_pattern(members["diffraction"][rows], scale)
    return Footing(
        mask=beam.illumination_mask(lit, fraction),
        photons=beam.photons_per_pixel(lit, probe, per_pattern),
        photons_per_pattern=per_pattern,
    )


def photons_per_pattern(diffraction: np.ndarray, intensity_scale: float) -> float:
    """Mean total counts of amplitude patterns: mean of ``sum((d * scale) ** 2)``."""
    if len(diffraction) == 0:
        return 0.0
    total = sum(
        float(np.sum(np.square(chunk, dtype=np.float64)))
        for chunk in (
            diffraction[i : i + PHOTON_CHUNK]
            for i in range(0, len(diffraction), PHOTON_CHUNK)
        )
    )
    return total * intensity_scale**2 / len(diffraction)


def unscored(status: ScoreStatus, reason: str) -> dict[str, Any]:
    """A score that is not there, and why."""
    return {"status": status.value, "reason": reason}


def why_no_reconstruction(record: JobRecord | None, has_file: bool) -> str | None:
    """Why a job's folder holds no reconstruction to score (None: it holds one)."""
    if record is None:
        return "no job record on disk: the job has not run"
    if not record.status.has_reconstruction:
        return f"job {record.status}: {record.reason}"
    if not has_file:
        return f"job {record.status}, but its reconstruction file is missing"
    return None


@dataclass(frozen=True)
class Bounds:
    """How finely to register, and the alignment beyond which a score is doubtful
    (the ``scoring`` parameters)."""

    upsample_factor: int
    max_shift_px: float
    max_phase_ramp_rad_per_px: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Bounds:
        return cls(
            params["upsample_factor"],
            params["max_shift_px"],
            params["max_phase_ramp_rad_per_px"],
        )


def score(
    image: np.ndarray,
    truth: np.ndarray,
    footing: Footing,
    bounds: Bounds,
    scored: np.ndarray | None = None,
) -> dict[str, Any]:
    """A reconstruction on the job's lit pixels (or the part ``scored`` of them where
    it has values), beside the null reference and the noise floor, with its flags."""
    mask = footing.mask if scored is None else scored
    found = m.compare(image, truth, mask, bounds.upsample_factor)
    alignment = m.Alignment.from_dict(found["alignment"])
    worse = m.not_below_null(found)
    flags = [worse] * bool(worse) + alignment.excess(
        bounds.max_shift_px, bounds.max_phase_ramp_rad_per_px
    )
    return {
        "status": ScoreStatus.SCORED.value,
        "reason": None,
        **found,
        "noise_floor": {"phase": footing.noise_floor(mask)},
        "coverage": float(mask.sum() / footing.mask.sum()),
        "flags": flags,
    }


# The keys of a score (``score``), in metrics.json and comparison.json alike.
SCORE_KEYS = (
    "status",
    "reason",
    "amplitude",
    "phase",
    "null",
    "noise_floor",
    "alignment",
    "frc_curves",
    "coverage",
    "flags",
)
SCORE_COLUMNS = [
    "metric",
    "amplitude",
    "phase",
    "null_amplitude",
    "null_phase",
    "phase_noise_floor",
]


def score_rows(found: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A scored score's tidy rows, one per metric (none when it is not scored)."""
    if found.get("status") != ScoreStatus.SCORED.value:
        return []
    return [
        {
            "metric": metric.name,
            "amplitude": found["amplitude"][metric.name],
            "phase": found["phase"][metric.name],
            "null_amplitude": found["null"]["amplitude"][metric.name],
            "null_phase": found["null"]["phase"][metric.name],
            "phase_noise_floor": found["noise_floor"]["phase"].get(metric.name),
        }
        for metric in m.METRICS
    ]
