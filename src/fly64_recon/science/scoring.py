"""What a job's scores are measured against: its ground truth, lit pixels and photons.

Pure functions on the members of a job's input file (DATA-001). Every pipeline that
scores a reconstruction of a job against its ground truth (evaluation, comparison) takes
its mask and noise floor from here, so their numbers stand on the same footing:

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

import numpy as np

from fly64_recon.contract import read_metadata
from fly64_recon.science import beam

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
