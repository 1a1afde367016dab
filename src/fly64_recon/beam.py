"""Where the beam was and how much of it: illumination, overlap, photons, noise floor.

Pure NumPy on a probe and its scan positions (DATA-001 conventions: probe centres in
object pixels, footprint ``[y - N/2, y + N/2) x [x - N/2, x + N/2)``). The simulate,
baseline and evaluation pipelines all measure a scan with these functions, so a view's
metadata, a job's manifest entry and its metrics agree.

- Illumination: ``I(r) = sum_j |P(r - r_j)|^2`` on the object grid (each footprint
  placed at the nearest whole pixel); the mask is ``I >= fraction * max(I)``.
- Probe diameter: the full width at half maximum of the azimuthally averaged
  ``|P|^2`` around its centroid (the outermost radius at or above half the profile's
  peak, doubled). A defocused zone-plate beam is an annulus-like disc whose radial
  profile is flat-topped: this is its geometric diameter, where an equal-area
  threshold would count only the brightest ring.
- Overlap: the disc-overlap fraction of two discs of diameter ``D = 2R`` at distance
  ``d``, ``f(d) = [2R^2 acos(d/2R) - (d/2) sqrt(4R^2 - d^2)] / (pi R^2)`` (0 for
  ``d >= D``), averaged over each position's 6 nearest neighbours: the study's
  "image-based" overlap. Good ptychography has f of about 0.4-0.6.
- Photons: with ``c`` photons per pattern, a pixel receives
  ``n(r) = c * I(r) / sum |P|^2`` photons over the scan.
- Shot-noise floor of the phase: a field of ``n`` photons has amplitude ``sqrt(n)``,
  and the square root of a Poisson count has a standard deviation of about 1/2 whatever
  its mean (Anscombe 1948, Biometrika 35, 246); a complex field whose modulus is known
  to +-1/2 at ``sqrt(n)`` has a phase uncertainty of ``1 / (2 sqrt(n))`` rad (the same
  bound as Godard et al. 2012, Opt. Express 20, 25914, for photon-limited CDI). The floor
  of a job is that, averaged over its mask: no reconstruction of these data can do
  much better, whatever the engine.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

OVERLAP_NEIGHBOURS = 6


def illumination(
    probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Summed ``|probe|^2`` of every footprint on an object grid of ``shape``."""
    intensity = np.abs(probe.reshape(-1, *probe.shape[-2:])) ** 2
    intensity = intensity.sum(axis=0)
    size = intensity.shape[-1]
    total = np.zeros(shape, dtype=np.float64)
    rows = np.rint(np.asarray(ycoords, dtype=np.float64) - size / 2).astype(int)
    cols = np.rint(np.asarray(xcoords, dtype=np.float64) - size / 2).astype(int)
    for row, col in zip(rows, cols, strict=True):
        y0, x0 = max(row, 0), max(col, 0)
        y1, x1 = min(row + size, shape[0]), min(col + size, shape[1])
        if y1 > y0 and x1 > x0:
            total[y0:y1, x0:x1] += intensity[y0 - row : y1 - row, x0 - col : x1 - col]
    return total


def illumination_mask(lit: np.ndarray, fraction: float) -> np.ndarray:
    """Pixels lit at or above ``fraction`` of the brightest one."""
    if not 0 < fraction < 1:
        raise ValueError(f"illumination fraction must be in (0, 1), got {fraction!r}")
    peak = float(lit.max()) if lit.size else 0.0
    if peak <= 0:
        return np.zeros(lit.shape, dtype=bool)
    return lit >= fraction * peak


def probe_diameter(probe: np.ndarray) -> float:
    """Full width at half maximum of the probe's radial intensity profile, pixels."""
    intensity = np.abs(probe.reshape(-1, *probe.shape[-2:])) ** 2
    intensity = intensity.sum(axis=0)
    total = intensity.sum()
    if total <= 0:
        return 0.0
    rows, cols = np.indices(intensity.shape)
    cy = float((rows * intensity).sum() / total)
    cx = float((cols * intensity).sum() / total)
    radius = np.rint(np.hypot(rows - cy, cols - cx)).astype(int).ravel()
    counts = np.bincount(radius)
    profile = np.bincount(radius, weights=intensity.ravel()) / np.maximum(counts, 1)
    above = np.flatnonzero(profile >= profile.max() / 2)
    outer = int(above[-1])
    if outer + 1 >= len(profile):
        return float(2 * outer)
    # Interpolate the half-maximum crossing between the last bin above and the next.
    high, low = profile[outer], profile[outer + 1]
    step = (high - profile.max() / 2) / (high - low) if high > low else 0.0
    return float(2 * (outer + step))


def disc_overlap(distance: np.ndarray, diameter: float) -> np.ndarray:
    """Overlap area of two discs of ``diameter`` at ``distance``, over one disc's area."""
    d = np.asarray(distance, dtype=np.float64)
    if diameter <= 0:
        return np.zeros_like(d)
    r = diameter / 2
    inside = np.clip(d, 0, diameter)
    area = 2 * r**2 * np.arccos(inside / (2 * r)) - (inside / 2) * np.sqrt(
        4 * r**2 - inside**2
    )
    return np.where(d < diameter, area / (np.pi * r**2), 0.0)


def scan_overlap(xcoords: np.ndarray, ycoords: np.ndarray, diameter: float) -> float:
    """Mean disc overlap of each position with its 6 nearest neighbours."""
    positions = np.column_stack([ycoords, xcoords]).astype(np.float64)
    if len(positions) < 2:
        return 0.0
    k = min(OVERLAP_NEIGHBOURS, len(positions) - 1)
    distance, _ = cKDTree(positions).query(positions, k=k + 1)
    return float(disc_overlap(distance[:, 1:], diameter).mean())


def photons_per_pixel(
    lit: np.ndarray, probe: np.ndarray, photons_per_pattern: float
) -> np.ndarray:
    """Photons each object pixel received over the scan."""
    power = float((np.abs(probe) ** 2).sum())
    if power <= 0:
        return np.zeros_like(lit)
    return photons_per_pattern * lit / power


def phase_noise_floor(photons: np.ndarray, mask: np.ndarray) -> float:
    """Shot-noise limit of the phase error over ``mask``: mean of 1 / (2 sqrt(n)), rad."""
    counts = photons[mask]
    if counts.size == 0 or np.any(counts <= 0):
        return float("inf")
    return float(np.mean(0.5 / np.sqrt(counts)))
