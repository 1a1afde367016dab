"""Synthetic ptychography: probe, object, scan and far-field counts.

Pure array code (numpy, with scipy's FFT and KD-tree). Conventions, shared with
``fly64_recon.contract`` and pty-chi:

- positions are ``(n, 2)`` float64 arrays of probe centres ``[y, x]`` in object pixels;
  the footprint of ``(y, x)`` is ``obj[y - N/2 : y + N/2, x - N/2 : x + N/2]``, and a
  fractional position shifts it sub-pixel by a Fourier shift, exactly as
  ``ptychi.image_proc.extract_patches_fourier_shift`` does at ``(y - 0.5, x - 0.5)``;
- diffraction is far-field intensity with the DC term at the centre (fftshifted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft as sfft

SCAN_PATTERNS = ("fly", "random")
# Independent random streams of one simulation seed.
_OBJECT_STREAM, _SCAN_STREAM, _NOISE_STREAM, _POSITION_ERROR_STREAM = 1, 2, 3, 4
# Sub-pixel shifts need one extra object pixel on each side of a footprint.
_SHIFT_PAD = 1


def object_rng(seed: int) -> np.random.Generator:
    """The random stream of the object."""
    return np.random.default_rng([seed, _OBJECT_STREAM])


def scan_rng(seed: int) -> np.random.Generator:
    """The random stream of the scan positions."""
    return np.random.default_rng([seed, _SCAN_STREAM])


def position_error_rng(seed: int) -> np.random.Generator:
    """The random stream of the recorded positions' errors."""
    return np.random.default_rng([seed, _POSITION_ERROR_STREAM])


def noise_keys(seed: int, dose: float, scan_index: np.ndarray) -> np.ndarray:
    """Seed entropy of each pattern's photon noise: (seed, dose value, scan index).

    Keyed by the dose's value, not its place in the list, so adding a dose changes no
    other dose's files.
    """
    dose_bits = int(np.float64(dose).view(np.uint64))
    keys = np.empty((len(scan_index), 4), dtype=np.uint64)
    keys[:] = [seed, _NOISE_STREAM, dose_bits, 0]
    keys[:, 3] = scan_index
    return keys


def make_probe(
    size: int, aperture: float, central_stop: float, beam_diameter: float
) -> np.ndarray:
    """A defocused zone-plate probe: annular pupil with quadratic phase, complex64.

    ``aperture`` is the pupil radius as a fraction of Nyquist, ``central_stop`` the
    stop radius as a fraction of the pupil radius, and ``beam_diameter`` the geometric
    beam diameter as a fraction of ``size``. The far field of the probe is the pupil,
    so its peak amplitude is 1.
    """
    k = np.arange(size) - size // 2
    r = np.hypot(k[:, None], k[None, :])
    radius = aperture * size / 2
    # Edges one pixel soft: hard ones ring across the whole frame.
    pupil = np.clip(radius - r + 0.5, 0, 1) * np.clip(
        r - central_stop * radius + 0.5, 0, 1
    )
    # A defocus of w waves at the rim displaces rim rays by 2*size*w/radius pixels,
    # so w = beam_diameter * radius / 4 gives the requested beam diameter.
    phase = np.pi * beam_diameter * r**2 / (2 * radius)
    field = pupil * np.exp(1j * phase)
    probe = sfft.fftshift(sfft.ifft2(sfft.ifftshift(field), norm="ortho"))
    return probe.astype(np.complex64)


def siemens_star(shape: tuple[int, int], spokes: int, radius: float) -> np.ndarray:
    """An anti-aliased Siemens star in [0, 1] centred on the object, 0 outside."""
    y, x = _centred_grid(shape)
    r = np.hypot(y, x)
    theta = np.arctan2(y, x)
    # r * sin(spokes * theta) / spokes is about the distance to the nearest spoke edge.
    star = np.clip(0.5 + r * np.sin(spokes * theta) / spokes, 0, 1)
    return star * np.clip(radius - r + 0.5, 0, 1)


def gaussian_blobs(
    shape: tuple[int, int],
    rng: np.random.Generator,
    count: int,
    sigma_range: tuple[float, float],
) -> np.ndarray:
    """Signed Gaussian blobs with log-uniform widths, normalised to [0, 1]."""
    h, w = shape
    cy = rng.uniform(0, h, count)
    cx = rng.uniform(0, w, count)
    sigma = np.exp(rng.uniform(*np.log(sigma_range), count))
    weight = rng.choice([-1.0, 1.0], count) * rng.uniform(0.5, 1.0, count)
    gy = np.exp(-0.5 * ((np.arange(h)[:, None] - cy) / sigma) ** 2)
    gx = np.exp(-0.5 * ((np.arange(w)[:, None] - cx) / sigma) ** 2)
    # Separable Gaussians: the sum over blobs is one matrix product.
    return _unit_range((gy * weight) @ gx.T)


def texture(
    shape: tuple[int, int], rng: np.random.Generator, sigma: float
) -> np.ndarray:
    """Gaussian-filtered white noise normalised to [0, 1]."""
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    noise = sfft.rfft2(rng.standard_normal(shape))
    return _unit_range(sfft.irfft2(noise * kernel, s=shape))


def make_object(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    spokes: int,
    star_radius: float,
    blob_count: int,
    blob_sigma: tuple[float, float],
    texture_sigma: float,
    weights: Mapping[str, float],
    min_amplitude: float,
    max_phase: float,
) -> np.ndarray:
    """Complex transmission with structure at several scales; complex64.

    A Siemens star (``star_radius`` is a fraction of the half-width) appears in both
    amplitude and phase; blobs and texture are drawn separately for each, so the two
    are not copies. Amplitude lies in [min_amplitude, 1], phase in [-max_phase,
    max_phase].
    """
    star = weights["star"] * siemens_star(shape, spokes, star_radius * min(shape) / 2)

    def thickness() -> np.ndarray:
        blobs = gaussian_blobs(shape, rng, blob_count, blob_sigma)
        fine = texture(shape, rng, texture_sigma)
        return _unit_range(star + weights["blobs"] * blobs + weights["texture"] * fine)

    amplitude = 1 - (1 - min_amplitude) * thickness()
    phase = max_phase * (2 * thickness() - 1)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def scan_bounds(
    object_shape: tuple[int, int], size: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest ``[y, x]`` probe centre whose footprint fits the object."""
    if margin < _SHIFT_PAD:
        raise ValueError(f"scan margin must be at least {_SHIFT_PAD} px, got {margin}")
    low = np.full(2, size / 2 + margin)
    high = np.asarray(object_shape, dtype=np.float64) - size / 2 - margin
    if np.any(high < low):
        raise ValueError(
            f"object {tuple(object_shape)} is too small for {size} px patches "
            f"with a {margin} px margin"
        )
    return low, high


def fly_scan(
    object_shape: tuple[int, int],
    size: int,
    rows: int,
    points_per_row: int,
    jitter: float,
    margin: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A snake fly scan: evenly spaced rows of evenly spaced triggers, with jitter."""
    low, high = scan_bounds(object_shape, size, margin)
    ys = np.linspace(low[0], high[0], rows)
    xs = np.linspace(low[1], high[1], points_per_row)
    x = np.where(np.arange(rows)[:, None] % 2 == 1, xs[::-1], xs)
    y = np.broadcast_to(ys[:, None], x.shape)
    positions = np.stack([y.ravel(), x.ravel()], axis=1)
    positions += rng.normal(0.0, jitter, positions.shape)
    return np.clip(positions, low, high)


def recorded_positions(
    positions: np.ndarray,
    error: float,
    object_shape: tuple[int, int],
    size: int,
    margin: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The positions as an encoder records them: Gaussian error of std ``error`` px on
    each coordinate of the true ones, clipped so that every footprint still fits."""
    low, high = scan_bounds(object_shape, size, margin)
    return np.clip(positions + rng.normal(0.0, error, positions.shape), low, high)


def random_scan(
    object_shape: tuple[int, int],
    size: int,
    n_positions: int,
    margin: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Uniformly random probe centres over the scannable area."""
    low, high = scan_bounds(object_shape, size, margin)
    return rng.uniform(low, high, (n_positions, 2))


def extract_patches(
    obj: np.ndarray, positions: np.ndarray, size: int, workers: int = -1
) -> np.ndarray:
    """Object footprints at probe centres, sub-pixel shifted like pty-chi; complex64."""
    start = np.asarray(positions, dtype=np.float64) - size / 2
    corner = np.floor(start).astype(np.int64) - _SHIFT_PAD
    width = size + 2 * _SHIFT_PAD
    if corner.size and (
        corner.min() < 0 or np.any(corner.max(axis=0) + width > obj.shape)
    ):
        raise ValueError(
            f"a {size} px footprint (+{_SHIFT_PAD} px for sub-pixel shifts) leaves "
            f"the {obj.shape} object"
        )
    windows = np.lib.stride_tricks.sliding_window_view(obj, (width, width))
    crops = windows[corner[:, 0], corner[:, 1]]
    fraction = start - corner - _SHIFT_PAD
    freq = sfft.fftfreq(width)
    ramp_y = np.exp(2j * np.pi * freq[None, :] * fraction[:, :1]).astype(np.complex64)
    ramp_x = np.exp(2j * np.pi * freq[None, :] * fraction[:, 1:]).astype(np.complex64)
    spectrum = sfft.fft2(crops, overwrite_x=True, workers=workers)
    spectrum *= ramp_y[:, :, None] * ramp_x[:, None, :]
    shifted = sfft.ifft2(spectrum, overwrite_x=True, workers=workers)
    return shifted[:, _SHIFT_PAD:-_SHIFT_PAD, _SHIFT_PAD:-_SHIFT_PAD]


def far_field(probe: np.ndarray, patches: np.ndarray, workers: int) -> np.ndarray:
    """Noise-free far-field intensities ``|fftshift(fft2(probe * patch))|^2``; float32."""
    spectrum = sfft.fft2(
        probe * patches, norm="ortho", overwrite_x=True, workers=workers
    )
    intensity = np.square(spectrum.real)
    intensity += np.square(spectrum.imag)
    return sfft.fftshift(intensity, axes=(-2, -1))


def simulate_amplitudes(
    probe: np.ndarray,
    obj: np.ndarray,
    positions: np.ndarray,
    dose: float,
    noise_keys: np.ndarray,
    chunk_size: int,
    workers: int | None = None,
) -> tuple[np.ndarray, float]:
    """Poisson-noisy amplitudes ``sqrt(counts) / scale`` (float32) and the scale.

    The scale makes the mean noise-free total count per pattern equal ``dose``. Each
    pattern draws its noise from ``default_rng(noise_keys[i])``, so the bytes do not
    depend on chunking or threads. Chunks bound the working memory and run on
    ``workers`` threads (default: every core); one buffer holds the intensities and
    then the amplitudes.
    """
    size = probe.shape[-1]
    data = np.empty((len(positions), size, size), dtype=np.float32)

    def intensities(chunk: slice) -> None:
        patches = extract_patches(obj, positions[chunk], size, workers=1)
        data[chunk] = far_field(probe, patches, workers=1)

    def amplitudes(chunk: slice) -> None:
        for i in range(chunk.start, chunk.stop):
            rate = data[i].astype(np.float64) * scale**2
            data[i] = (
                np.sqrt(np.random.default_rng(noise_keys[i]).poisson(rate)) / scale
            )

    chunks = _chunks(len(positions), chunk_size)
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        list(pool.map(intensities, chunks))
        totals = data.sum(axis=(1, 2), dtype=np.float64)
        scale = float(np.sqrt(dose / totals.mean()))
        list(pool.map(amplitudes, chunks))
    return data, scale


def photon_counts(amplitudes: np.ndarray, scale: float) -> np.ndarray:
    """The Poisson counts behind stored amplitudes: ``round((amplitude * scale)^2)``."""
    return np.rint((amplitudes.astype(np.float64) * scale) ** 2).astype(np.int64)


def _chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _centred_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the object centre, broadcastable."""
    h, w = shape
    return np.arange(h)[:, None] - (h - 1) / 2, np.arange(w)[None, :] - (w - 1) / 2


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Rescale linearly to [0, 1]; a constant map becomes zeros."""
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low)
