"""Where the beam was and how much of it: illumination, overlap, photons, noise floor.

Pure NumPy on a probe and its scan positions (DATA-001 conventions: probe centres in
object pixels, footprint ``[y - N/2, y + N/2) x [x - N/2, x + N/2)``). The simulate,
baseline and evaluation pipelines all measure a scan with these functions, so a view's
metadata, a job's manifest entry and its metrics agree.

- Illumination: ``I(r) = sum_j |P(r - r_j)|^2`` on the object grid (each footprint
  placed at the nearest whole pixel); the mask is ``I >= fraction * max(I)``.
- Probe diameter: the full width at half maximum of ``|P|^2`` projected onto each
  axis (the mean of the two), the beam size a knife-edge scan measures at a beamline.
  A defocused zone-plate beam has a hot centre or hot rings: the FWHM of the raw
  image or of its radial profile measures those, not the beam (a flat-topped disc of
  diameter D gives 0.87 D; a Gaussian its own FWHM).
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
  of a job is that, over its mask, as the phase MAE (``sqrt(2/pi)`` times the standard
  deviation, for Gaussian errors) and MSE: no reconstruction of these data can do much
  better, whatever the engine.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
from scipy import special
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
    """The beam's full width at half maximum, as a knife-edge scan measures it, pixels.

    The mean of the FWHMs of ``|probe|^2`` projected onto each axis.
    """
    intensity = np.abs(probe.reshape(-1, *probe.shape[-2:])) ** 2
    intensity = intensity.sum(axis=0)
    if not intensity.any():
        return 0.0
    return float(np.mean([fwhm(intensity.sum(axis=0)), fwhm(intensity.sum(axis=1))]))


def fwhm(profile: np.ndarray) -> float:
    """Full width at half maximum of a 1-D profile, between its outermost crossings."""
    half = profile.max() / 2
    above = np.flatnonzero(profile >= half)
    first, last = int(above[0]), int(above[-1])
    left = first - _fraction_below(profile, first, first - 1, half)
    right = last + _fraction_below(profile, last, last + 1, half)
    return float(right - left)


def _fraction_below(
    profile: np.ndarray, inside: int, outside: int, half: float
) -> float:
    """How far from ``inside`` towards ``outside`` the profile crosses ``half``."""
    if not 0 <= outside < len(profile):
        return 0.5
    high, low = profile[inside], profile[outside]
    return float((high - half) / (high - low)) if high > low else 0.5


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


def phase_noise_floor(photons: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The shot-noise limit of the phase error over ``mask``, as MAE and MSE (rad).

    Per pixel the phase error's standard deviation is ``1 / (2 sqrt(n))``; a Gaussian
    error of standard deviation s has a mean absolute value of ``s sqrt(2 / pi)``.
    """
    counts = photons[mask]
    if counts.size == 0 or np.any(counts <= 0):
        return {"mae": float("inf"), "mse": float("inf")}
    std = 0.5 / np.sqrt(counts)
    return {
        "mae": float(np.sqrt(2 / np.pi) * std.mean()),
        "mse": float(np.mean(std**2)),
    }


# A reconstruction whose final loss is this many times what shot noise allows does
# not explain its own patterns. Measured at dose 1e5 (40 LSQML epochs): good jobs
# 0.9x (N = 32, 144 positions) to 1.9x (N = 16, 18 positions: fewer patterns than the
# fit can use); positions swapped, reversed or a frame late 9-19x. At 1e4 those land
# at 2.0-2.7x, too near the small good jobs to call; at 1e3 nothing tells them apart.
MISFIT_FACTOR = 3.0
# Counts up to this are taken one by one; above it sqrt(counts) is near Gaussian with
# variance 1/4.
EXACT_COUNTS = 64


@functools.cache
def _sqrt_counts_error() -> np.ndarray:
    """E[(sqrt(k) - sqrt(lam))^2] for k ~ Poisson(lam), lam = 0 .. EXACT_COUNTS."""
    lam = np.arange(EXACT_COUNTS + 1, dtype=np.float64)[:, None]
    k = np.arange(4 * EXACT_COUNTS + 64, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):  # lam = 0: pmf set below
        log_pmf = k * np.log(lam) - lam - special.gammaln(k + 1)
    pmf = np.where(lam > 0, np.exp(log_pmf), (k == 0).astype(float))
    mean_sqrt = (pmf * np.sqrt(k)).sum(axis=1)
    return 2 * lam[:, 0] - 2 * np.sqrt(lam[:, 0]) * mean_sqrt


def shot_noise_loss(counts: Iterable[np.ndarray]) -> float:
    """The mean of ``(sqrt(counts) - sqrt(expected))^2`` that Poisson noise alone
    leaves, times 2: what pty-chi's Gaussian noise model's loss (its ``nll``, the mean
    squared amplitude error over sigma^2 = 1/4, halved) reaches for a reconstruction that
    explains its patterns perfectly. Each pixel's measured count stands in for its
    expectation; ``counts`` come a chunk of patterns at a time."""
    table, total, pixels = _sqrt_counts_error(), 0.0, 0
    for chunk in counts:
        rounded = np.rint(chunk).astype(np.int64).ravel()
        low = rounded[rounded <= EXACT_COUNTS]
        total += float(np.bincount(low, minlength=EXACT_COUNTS + 1) @ table)
        total += 0.25 * (rounded.size - low.size)
        pixels += rounded.size
    return 2 * total / pixels if pixels else float("nan")


def describe_scan(
    probe: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    shape: tuple[int, int],
    photons_per_pattern: float,
    fraction: float,
) -> dict[str, float]:
    """A scan's probe diameter, overlap, lit area and photons per lit pixel."""
    diameter = probe_diameter(probe)
    lit = illumination(probe, xcoords, ycoords, shape)
    mask = illumination_mask(lit, fraction)
    photons = photons_per_pixel(lit, probe, photons_per_pattern)
    return {
        "probe_diameter_px": diameter,
        "overlap": scan_overlap(xcoords, ycoords, diameter),
        "lit_area_px": int(mask.sum()),
        "photons_per_px2": float(photons[mask].mean()) if mask.any() else 0.0,
    }


def overlap_warning(overlap: float) -> str | None:
    """Words for a scan whose neighbouring footprints do not overlap."""
    if overlap > 0:
        return None
    return (
        "measured overlap is 0: no position's footprint overlaps its 6 nearest "
        "neighbours' (ptychography needs overlap; expect a poor reconstruction)"
    )
