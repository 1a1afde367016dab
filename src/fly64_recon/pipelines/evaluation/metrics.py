"""Align a reconstruction to its ground truth and measure it: pure functions on arrays.

Alignment (``align``), in the order a ptychographic reconstruction needs it:

1. Crop to the scanned region: the bounding box of the N x N footprints
   ``[y - N/2, y + N/2) x [x - N/2, x + N/2)`` of the positions used, shrunk by a margin
   on every side (the footprint's rim is barely lit, so it is barely constrained).
2. Register: subpixel cross-correlation of the complex crops (scikit-image's
   ``phase_cross_correlation`` without phase normalisation, i.e. Guizar-Sicairos et al.
   2008: robust to noise, and its error is meaningful), after a first phase fit (step 3)
   and with both crops mean-subtracted and Hann-windowed; then a cubic-spline shift
   (scipy) of a padded crop, cropped again, so that no padded edge enters the region.
3. Phase: the reconstruction is known only up to a global phase and a linear phase ramp.
   With ``g = truth * conj(reconstruction)``, the ramp is the mean phase gradient
   ``angle(sum(g[i+1] * conj(g[i])))`` along each axis and the offset ``angle(sum(g))``
   after the ramp: amplitude-weighted and free of phase wrapping, unlike a plane fit.
4. Amplitude: the least-squares scale ``sum(|t| |r|) / sum(|r|^2)``.

Metrics (``image_metrics``), for amplitude and phase images alike; the dynamic range of
PSNR and SSIM is the ground truth's (max - min) over the region:

* MAE, MSE, PSNR (scikit-image).
* SSIM: scikit-image with Wang et al.'s settings (Gaussian window sigma 1.5, population
  covariance).
* MS-SSIM: scikit-image has none. Here it is the product of SSIM at up to five dyadic
  scales (2 x 2 mean pooling), raised to Wang, Simoncelli & Bovik's (2003) weights
  (renormalised when the image is too small for five). This uses the whole SSIM at every
  scale, not the contrast-structure term alone at the finer ones, so it runs a little
  below the original definition; it is 1 for identical images. Negative SSIMs count as 0.
* FRC against the ground truth: both images mean-subtracted and Hann-windowed, rings one
  ``1 / min(H, W)`` wide in spatial frequency (cycles per pixel; Nyquist is 0.5). The
  resolution is where the curve first falls below 0.5 and 1/7 (linear interpolation),
  reported as a fraction of Nyquist: 1.0 means it never fell below; the half-period
  resolution in pixels is ``1 / fraction``.

Phase error is measured after wrapping: the reconstruction's phase image is the truth's
phase plus the wrapped phase difference, so a 2 pi jump is no error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import (
    mean_squared_error,
    peak_signal_noise_ratio,
    structural_similarity,
)
from skimage.registration import phase_cross_correlation

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # scikit-image's Gaussian window for sigma 1.5
FRC_THRESHOLDS = {"frc_0.5": 0.5, "frc_1/7": 1 / 7}
NYQUIST = 0.5
SHIFT_PAD_PX = 8  # context around the region for the spline shift


@dataclass(frozen=True)
class Alignment:
    """How a reconstruction was brought onto its ground truth's frame."""

    region: tuple[int, int, int, int]  # y0, y1, x0, x1: rows y0:y1, columns x0:x1
    shift_px: tuple[float, float]  # (dy, dx) applied to the reconstruction
    registration_error: float
    phase_offset_rad: float  # at the region's centre
    phase_ramp_rad_per_px: tuple[float, float]  # (d/dy, d/dx)
    amplitude_scale: float

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats, for JSON."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alignment:
        """Inverse of ``to_dict``."""
        return cls(
            region=tuple(int(v) for v in data["region"]),
            shift_px=tuple(float(v) for v in data["shift_px"]),
            registration_error=float(data["registration_error"]),
            phase_offset_rad=float(data["phase_offset_rad"]),
            phase_ramp_rad_per_px=tuple(
                float(v) for v in data["phase_ramp_rad_per_px"]
            ),
            amplitude_scale=float(data["amplitude_scale"]),
        )


def is_flat(image: np.ndarray, tolerance: float) -> bool:
    """Whether amplitude and phase are both constant to ``tolerance``."""
    return bool(
        np.ptp(np.abs(image)) <= tolerance and np.ptp(np.angle(image)) <= tolerance
    )


def scanned_region(
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    patch_size: int,
    shape: tuple[int, int],
    margin_px: float,
) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the footprints, shrunk by ``margin_px``."""
    half = patch_size / 2 - margin_px
    y0 = max(0, int(np.ceil(np.min(ycoords) - half)))
    y1 = min(shape[0], int(np.floor(np.max(ycoords) + half)))
    x0 = max(0, int(np.ceil(np.min(xcoords) - half)))
    x1 = min(shape[1], int(np.floor(np.max(xcoords) + half)))
    if y1 - y0 < SSIM_MIN_SIDE or x1 - x0 < SSIM_MIN_SIDE:
        raise ValueError(
            f"scanned region {y1 - y0} x {x1 - x0} px is too small to measure "
            f"(at least {SSIM_MIN_SIDE} px a side); reduce evaluation.crop_margin"
        )
    return y0, y1, x0, x1


def crop(image: np.ndarray, region: Sequence[int]) -> np.ndarray:
    """The ``(y0, y1, x0, x1)`` region of an image."""
    y0, y1, x0, x1 = region
    return image[y0:y1, x0:x1]


def shift_complex(image: np.ndarray, shift: Sequence[float]) -> np.ndarray:
    """Shift a complex image by ``(dy, dx)`` pixels with cubic splines."""
    real = ndimage.shift(image.real, shift, order=3, mode="nearest")
    imag = ndimage.shift(image.imag, shift, order=3, mode="nearest")
    return real + 1j * imag


def shifted_region(
    image: np.ndarray, shift: Sequence[float], region: Sequence[int]
) -> np.ndarray:
    """The region of ``image`` shifted by ``shift``, interpolated from a padded crop."""
    pad = int(np.ceil(np.max(np.abs(shift)))) + SHIFT_PAD_PX
    y0, y1, x0, x1 = region
    outer = (
        max(0, y0 - pad),
        min(image.shape[0], y1 + pad),
        max(0, x0 - pad),
        min(image.shape[1], x1 + pad),
    )
    moved = shift_complex(crop(image, outer), shift)
    inner = (y0 - outer[0], y1 - outer[0], x0 - outer[2], x1 - outer[2])
    return crop(moved, inner)


def phase_ramp(
    shape: tuple[int, int], offset: float, gradient: Sequence[float]
) -> np.ndarray:
    """``offset + gy * y + gx * x``, with y and x measured from the image's centre."""
    y = np.arange(shape[0]) - (shape[0] - 1) / 2
    x = np.arange(shape[1]) - (shape[1] - 1) / 2
    return offset + gradient[0] * y[:, None] + gradient[1] * x[None, :]


def fit_phase(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float, float]:
    """Offset and ramp ``(phi, d/dy, d/dx)`` that best turn ``estimate`` into ``truth``."""
    product = truth * np.conj(estimate)
    gy = float(np.angle(np.sum(product[1:, :] * np.conj(product[:-1, :]))))
    gx = float(np.angle(np.sum(product[:, 1:] * np.conj(product[:, :-1]))))
    ramp = phase_ramp(product.shape, 0.0, (gy, gx))
    offset = float(np.angle(np.sum(product * np.exp(-1j * ramp))))
    return offset, gy, gx


def register(
    truth: np.ndarray, estimate: np.ndarray, upsample_factor: int
) -> tuple[np.ndarray, float]:
    """Subpixel shift that moves ``estimate`` onto ``truth``, and the registration error.

    The phase offset and ramp are taken out first (a ramp biases the correlation peak),
    and both images are mean-subtracted and Hann-windowed (their cut edges would too).
    """
    offset, gy, gx = fit_phase(truth, estimate)
    levelled = estimate * np.exp(1j * phase_ramp(estimate.shape, offset, (gy, gx)))
    window = np.outer(np.hanning(truth.shape[0]), np.hanning(truth.shape[1]))
    shift, error, _ = phase_cross_correlation(
        (truth - truth.mean()) * window,
        (levelled - levelled.mean()) * window,
        upsample_factor=upsample_factor,
        normalization=None,
    )
    return shift, float(error)


def align(
    reconstruction: np.ndarray,
    truth: np.ndarray,
    region: tuple[int, int, int, int],
    upsample_factor: int,
) -> tuple[Alignment, np.ndarray]:
    """Register ``reconstruction`` (same grid as ``truth``), fit phase and scale.

    Returns the alignment and the aligned reconstruction of the region.
    """
    target = crop(truth, region)
    shift, error = register(target, crop(reconstruction, region), upsample_factor)
    moved = shifted_region(reconstruction, shift, region)
    offset, gy, gx = fit_phase(target, moved)
    scale = np.sum(np.abs(target) * np.abs(moved)) / np.sum(np.abs(moved) ** 2)
    alignment = Alignment(
        region=region,
        shift_px=(float(shift[0]), float(shift[1])),
        registration_error=error,
        phase_offset_rad=offset,
        phase_ramp_rad_per_px=(gy, gx),
        amplitude_scale=float(scale),
    )
    return alignment, _correct(moved, alignment)


def apply_alignment(reconstruction: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The reconstruction's region, shifted, phase-corrected and scaled."""
    moved = shifted_region(reconstruction, alignment.shift_px, alignment.region)
    return _correct(moved, alignment)


def _correct(moved: np.ndarray, alignment: Alignment) -> np.ndarray:
    """Remove the phase offset and ramp and match the amplitude scale."""
    correction = phase_ramp(
        moved.shape, alignment.phase_offset_rad, alignment.phase_ramp_rad_per_px
    )
    return alignment.amplitude_scale * moved * np.exp(1j * correction)


def amplitude_and_phase(
    truth: np.ndarray, aligned: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(truth, estimate)`` amplitude images and phase images (phase error wrapped)."""
    truth_phase = np.angle(truth)
    estimate_phase = truth_phase + np.angle(aligned * np.conj(truth))
    return (np.abs(truth), np.abs(aligned)), (truth_phase, estimate_phase)


def ssim(truth: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    """SSIM with Wang et al.'s Gaussian window."""
    return float(
        structural_similarity(
            truth,
            estimate,
            data_range=data_range,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
        )
    )


def pool2(image: np.ndarray) -> np.ndarray:
    """2 x 2 mean pooling (an odd last row or column is dropped)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def ssim_scales(
    truth: np.ndarray, estimate: np.ndarray, data_range: float
) -> list[float]:
    """SSIM at up to five dyadic scales, finest first (as long as the window fits)."""
    values = []
    for _ in MS_SSIM_WEIGHTS:
        if min(truth.shape) < SSIM_MIN_SIDE:
            break
        values.append(ssim(truth, estimate, data_range))
        truth, estimate = pool2(truth), pool2(estimate)
    return values


def ms_ssim(scales: Sequence[float]) -> float:
    """Multi-scale SSIM: the weighted geometric mean of per-scale SSIMs (negatives: 0)."""
    weights = np.asarray(MS_SSIM_WEIGHTS[: len(scales)])
    values = np.clip(np.asarray(scales), 0.0, None)
    return float(np.prod(values ** (weights / weights.sum())))


def frc(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation: ring frequencies (cycles/px) up to Nyquist, curve."""
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.fftfreq(a.shape[1])[None, :]
    step = 1.0 / min(a.shape)
    rings = np.rint(np.hypot(ky, kx) / step).astype(int).ravel()
    n = int(round(NYQUIST / step)) + 1

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(rings, weights=values.ravel(), minlength=n)[1:n]

    cross = ring_sum(np.real(fa * np.conj(fb)))
    norm = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    return np.arange(1, n) * step, cross / norm


def frc_crossing(frequency: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """Where the curve first falls below ``threshold``, as a fraction of Nyquist."""
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return 1.0
    i = int(below[0])
    if i == 0:
        return float(frequency[0] / NYQUIST)
    f0, f1, c0, c1 = frequency[i - 1], frequency[i], curve[i - 1], curve[i]
    return float((f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)) / NYQUIST)


def image_metrics(
    truth: np.ndarray, estimate: np.ndarray
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """MAE, MSE, PSNR, SSIM, MS-SSIM and FRC crossings of a real image; FRC curve."""
    data_range = float(np.ptp(truth))
    with np.errstate(divide="ignore"):  # identical images: PSNR is inf
        psnr = peak_signal_noise_ratio(truth, estimate, data_range=data_range)
    frequency, curve = frc(truth, estimate)
    scales = ssim_scales(truth, estimate, data_range)
    scores = {
        "mae": float(np.mean(np.abs(truth - estimate))),
        "mse": float(mean_squared_error(truth, estimate)),
        "psnr": float(psnr),
        "ssim": scales[0],
        "ms_ssim": ms_ssim(scales),
    }
    for name, threshold in FRC_THRESHOLDS.items():
        scores[name] = frc_crossing(frequency, curve, threshold)
    return scores, frequency, curve


def compare(
    reconstruction: np.ndarray,
    truth: np.ndarray,
    region: tuple[int, int, int, int],
    upsample_factor: int,
) -> dict[str, Any]:
    """Align, then measure amplitude and phase: the ground-truth part of a job's metrics."""
    alignment, aligned = align(reconstruction, truth, region, upsample_factor)
    amplitude, phase = amplitude_and_phase(crop(truth, region), aligned)
    amplitude_scores, _, amplitude_frc = image_metrics(*amplitude)
    phase_scores, frequency, phase_frc = image_metrics(*phase)
    return {
        "alignment": alignment.to_dict(),
        "amplitude": amplitude_scores,
        "phase": phase_scores,
        "frc_curves": {
            "frequency_cycles_per_px": frequency.tolist(),
            "amplitude": amplitude_frc.tolist(),
            "phase": phase_frc.tolist(),
        },
    }


def data_fit(loss: np.ndarray) -> dict[str, Any]:
    """What the loss curve says about the fit to the measured data."""
    loss = np.asarray(loss, dtype=float)
    return {
        "final_loss": float(loss[-1]),
        "min_loss": float(np.min(loss)),
        "epochs": int(loss.size),
        "loss": loss.tolist(),
    }
