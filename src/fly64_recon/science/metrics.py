"""Align a reconstruction to its ground truth and measure it where the beam was.

Pure functions on arrays. Every ground-truth number is measured inside the job's
illumination mask (``fly64_recon.science.beam``: summed ``|probe|^2`` over the job's positions at
or above a fraction of its maximum); ``region`` is the mask's bounding box, the crop all
images are cut to.

Alignment (``align``), in the order a ptychographic reconstruction needs it:

1. Register: subpixel cross-correlation of the complex crops (scikit-image's
   ``phase_cross_correlation`` without phase normalisation, i.e. Guizar-Sicairos et al.
   2008), after a first phase fit (step 2), with both crops mean-subtracted over the
   mask and weighted by the mask softened with a Gaussian (``SOFT_MASK_SIGMA``): unlit
   pixels, which hold only the flat start, take no part, and by a Hann window. Then a cubic-spline shift
   (scipy) of a padded crop, cropped again, so that no padded edge enters the region.
2. Phase: the reconstruction is known only up to a global phase and a linear phase ramp.
   With ``g = truth * conj(reconstruction)`` on the mask, the ramp is the mean phase
   gradient ``angle(sum(g[i+1] * conj(g[i])))`` along each axis and the offset
   ``angle(sum(g))`` after the ramp: amplitude-weighted and free of phase wrapping.
3. Amplitude: the least-squares scale ``sum(|t| |r|) / sum(|r|^2)`` on the mask.

The null reference (``null_reference``) is a flat object (no reconstruction at all)
taken through steps 2 and 3 on the same mask, no shift: the score a reconstruction must
beat to have recovered anything.

Metrics (``image_metrics``), for amplitude and phase images alike, over the mask; the
dynamic range of PSNR and SSIM is the ground truth's (max - min) on the mask:

* MAE, MSE, PSNR over the mask's pixels.
* SSIM: scikit-image's SSIM map with Wang et al.'s settings (Gaussian window sigma 1.5,
  population covariance), averaged over the mask.
* MS-SSIM: scikit-image has none. Here it is the product of the masked SSIM at up to
  five dyadic scales (2 x 2 mean pooling of images and mask), raised to Wang, Simoncelli
  & Bovik's (2003) weights (renormalised when the image is too small for five). This
  uses the whole SSIM at every scale, not the contrast-structure term alone at the finer
  ones, so it runs a little below the original definition; it is 1 for identical
  images. Negative SSIMs count as 0.
* FRC against the ground truth: both images mean-subtracted over the mask and weighted
  by the same window as the registration, rings one ``1 / min(H, W)`` wide in spatial frequency (cycles
  per pixel; Nyquist is 0.5). Against a ground truth the resolution is where the curve
  first falls below 0.5 (the counterpart of the half-dataset 1/7 criterion, Rosenthal &
  Henderson 2003), as a fraction of Nyquist: 1.0 means it never fell below.
* Half-dataset FRC (``half_dataset_frc``): two reconstructions from interleaved halves
  of the patterns, compared with each other, with the 1/7 and the half-bit threshold
  (van Heel & Schatz 2005): the resolution measure that needs no ground truth.

Phase error is measured after wrapping: the reconstruction's phase image is the truth's
phase plus the wrapped phase difference, so a 2 pi jump is no error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # scikit-image's Gaussian window for sigma 1.5
TRUTH_FRC_THRESHOLD = 0.5
HALF_FRC_THRESHOLD = 1 / 7
NYQUIST = 0.5
SHIFT_PAD_PX = 8  # context around the region for the spline shift
SOFT_MASK_SIGMA = 2.0  # px: the mask's edge as a taper, for registration and FRC


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

    def excess(self, max_shift_px: float, max_ramp_rad_per_px: float) -> list[str]:
        """What in this alignment is larger than a trustworthy one would be, in words."""
        shift = float(np.hypot(*self.shift_px))
        ramp = float(np.hypot(*self.phase_ramp_rad_per_px))
        found = []
        if shift > max_shift_px:
            found.append(
                f"registration shifted the reconstruction by {shift:.2f} px "
                f"(bound {max_shift_px} px): the alignment may be spurious"
            )
        if ramp > max_ramp_rad_per_px:
            found.append(
                f"a phase ramp of {ramp:.3f} rad/px was removed (bound "
                f"{max_ramp_rad_per_px} rad/px): the reconstruction is tilted"
            )
        return found


def is_flat(image: np.ndarray, tolerance: float) -> bool:
    """Whether amplitude and phase are both constant to ``tolerance``."""
    return bool(
        np.ptp(np.abs(image)) <= tolerance and np.ptp(np.angle(image)) <= tolerance
    )


def mask_region(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of a mask, big enough to measure."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the illumination mask is empty: no pixel was lit")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if y1 - y0 < SSIM_MIN_SIDE or x1 - x0 < SSIM_MIN_SIDE:
        raise ValueError(
            f"illuminated region {y1 - y0} x {x1 - x0} px is too small to measure "
            f"(at least {SSIM_MIN_SIDE} px a side); lower illumination_fraction (globals.yml)"
        )
    return y0, y1, x0, x1


def crop(image: np.ndarray, region: Sequence[int]) -> np.ndarray:
    """The ``(y0, y1, x0, x1)`` region of an image."""
    y0, y1, x0, x1 = region
    return image[y0:y1, x0:x1]


def window(mask: np.ndarray) -> np.ndarray:
    """A Hann window times the mask with a Gaussian taper: no cut edge, no unlit pixel."""
    hann = np.outer(np.hanning(mask.shape[0]), np.hanning(mask.shape[1]))
    return hann * ndimage.gaussian_filter(mask.astype(np.float64), SOFT_MASK_SIGMA)


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


def fit_phase(
    truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray
) -> tuple[float, float, float]:
    """Offset and ramp ``(phi, d/dy, d/dx)`` that best turn ``estimate`` into ``truth``
    on ``mask``."""
    product = np.where(mask, truth * np.conj(estimate), 0)
    gy = float(np.angle(np.sum(product[1:, :] * np.conj(product[:-1, :]))))
    gx = float(np.angle(np.sum(product[:, 1:] * np.conj(product[:, :-1]))))
    ramp = phase_ramp(product.shape, 0.0, (gy, gx))
    offset = float(np.angle(np.sum(product * np.exp(-1j * ramp))))
    return offset, gy, gx


def register(
    truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray, upsample_factor: int
) -> tuple[np.ndarray, float]:
    """Subpixel shift that moves ``estimate`` onto ``truth``, and the registration error.

    The phase offset and ramp are taken out first (a ramp biases the correlation peak),
    and both images are mean-subtracted over the mask and weighted by the soft mask.
    """
    offset, gy, gx = fit_phase(truth, estimate, mask)
    levelled = estimate * np.exp(1j * phase_ramp(estimate.shape, offset, (gy, gx)))
    weight = window(mask)
    shift, error, _ = phase_cross_correlation(
        (truth - truth[mask].mean()) * weight,
        (levelled - levelled[mask].mean()) * weight,
        upsample_factor=upsample_factor,
        normalization=None,
    )
    return shift, float(error)


def align(
    reconstruction: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    upsample_factor: int,
) -> tuple[Alignment, np.ndarray]:
    """Register ``reconstruction`` (same grid as ``truth``), fit phase and scale.

    Returns the alignment and the aligned reconstruction of the mask's region.
    """
    region = mask_region(mask)
    target, lit = crop(truth, region), crop(mask, region)
    shift, error = register(target, crop(reconstruction, region), lit, upsample_factor)
    moved = shifted_region(reconstruction, shift, region)
    alignment = _fit(
        target, moved, lit, region, (float(shift[0]), float(shift[1])), error
    )
    return alignment, _correct(moved, alignment)


def null_reference(truth: np.ndarray, mask: np.ndarray) -> tuple[Alignment, np.ndarray]:
    """A flat object (no reconstruction), phase and scale fitted on the same mask."""
    region = mask_region(mask)
    target = crop(truth, region)
    flat = np.ones_like(target)
    alignment = _fit(target, flat, crop(mask, region), region, (0.0, 0.0), 0.0)
    return alignment, _correct(flat, alignment)


def _fit(
    target: np.ndarray,
    moved: np.ndarray,
    lit: np.ndarray,
    region: tuple[int, int, int, int],
    shift: tuple[float, float],
    registration_error: float,
) -> Alignment:
    offset, gy, gx = fit_phase(target, moved, lit)
    scale = np.sum(np.abs(target[lit]) * np.abs(moved[lit])) / np.sum(
        np.abs(moved[lit]) ** 2
    )
    return Alignment(
        region=region,
        shift_px=shift,
        registration_error=registration_error,
        phase_offset_rad=offset,
        phase_ramp_rad_per_px=(gy, gx),
        amplitude_scale=float(scale),
    )


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


def ssim(
    truth: np.ndarray, estimate: np.ndarray, data_range: float, mask: np.ndarray
) -> float:
    """SSIM with Wang et al.'s Gaussian window, averaged over ``mask``."""
    _, local = structural_similarity(
        truth,
        estimate,
        data_range=data_range,
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
        full=True,
    )
    return float(local[mask].mean())


def pool2(image: np.ndarray) -> np.ndarray:
    """2 x 2 mean pooling (an odd last row or column is dropped)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def ssim_scales(
    truth: np.ndarray, estimate: np.ndarray, data_range: float, mask: np.ndarray
) -> list[float]:
    """Masked SSIM at up to five dyadic scales, finest first (while the window fits)."""
    values = []
    for _ in MS_SSIM_WEIGHTS:
        if min(truth.shape) < SSIM_MIN_SIDE or not mask.any():
            break
        values.append(ssim(truth, estimate, data_range, mask))
        truth, estimate = pool2(truth), pool2(estimate)
        mask = pool2(mask.astype(np.float64)) >= 0.5
    return values


def ms_ssim(scales: Sequence[float]) -> float:
    """Multi-scale SSIM: the weighted geometric mean of per-scale SSIMs (negatives: 0)."""
    weights = np.asarray(MS_SSIM_WEIGHTS[: len(scales)])
    values = np.clip(np.asarray(scales), 0.0, None)
    return float(np.prod(values ** (weights / weights.sum())))


def _rings(shape: tuple[int, int]) -> tuple[np.ndarray, int, float]:
    """Each FFT pixel's ring index, the number of rings up to Nyquist (+1), ring width."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    step = 1.0 / min(shape)
    rings = np.rint(np.hypot(ky, kx) / step).astype(int).ravel()
    return rings, int(round(NYQUIST / step)) + 1, step


def frc(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation: ring frequencies (cycles/px) up to Nyquist, curve.

    Both images are mean-subtracted over ``mask`` (default: everywhere) and weighted
    by its :func:`window`.
    """
    if mask is None:
        mask = np.ones(a.shape, dtype=bool)
    weight = window(mask)
    fa = np.fft.fft2((a - a[mask].mean()) * weight)
    fb = np.fft.fft2((b - b[mask].mean()) * weight)
    rings, n, step = _rings(a.shape)

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(rings, weights=values.ravel(), minlength=n)[1:n]

    cross = ring_sum(np.real(fa * np.conj(fb)))
    norm = np.sqrt(ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(norm > 0, cross / norm, 0.0)
    return np.arange(1, n) * step, curve


def half_bit_threshold(shape: tuple[int, int]) -> np.ndarray:
    """van Heel & Schatz's (2005) half-bit curve for the rings of :func:`frc`."""
    rings, n, _ = _rings(shape)
    pixels = np.maximum(np.bincount(rings, minlength=n)[1:n], 1)
    root = np.sqrt(pixels)
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def frc_crossing(
    frequency: np.ndarray, curve: np.ndarray, threshold: float | np.ndarray
) -> float:
    """Where the curve first falls below ``threshold``, as a fraction of Nyquist."""
    threshold = np.broadcast_to(np.asarray(threshold, dtype=float), curve.shape)
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return 1.0
    i = int(below[0])
    if i == 0:
        return float(frequency[0] / NYQUIST)
    gap0, gap1 = curve[i - 1] - threshold[i - 1], curve[i] - threshold[i]
    f0, f1 = frequency[i - 1], frequency[i]
    return float((f0 + gap0 / (gap0 - gap1) * (f1 - f0)) / NYQUIST)


@dataclass(frozen=True)
class Metric:
    """One score of ``image_metrics``: how the reports, tables and figures show it."""

    name: str  # its key in every score, metrics.json and CSV row
    label: str
    phase_unit: str  # of the phase image's score ("": none); amplitude scores have none
    number: str  # its format in a report
    headline: bool  # in the study's tables and its figure, not only in the CSV

    def heading(self, part: str) -> str:
        """``phase MAE (rad)``, ``amplitude SSIM``."""
        unit = self.phase_unit if part == "phase" else ""
        return f"{part} {self.label}" + (f" ({unit})" if unit else "")


# Adding a metric: one entry here and its line in ``image_metrics``.
METRICS = (
    Metric("mae", "MAE", "rad", "{:.4f}", headline=True),
    Metric("mse", "MSE", "rad²", "{:.3g}", headline=False),
    Metric("psnr", "PSNR", "dB", "{:.1f}", headline=False),
    Metric("ssim", "SSIM", "", "{:.3f}", headline=True),
    Metric("ms_ssim", "MS-SSIM", "", "{:.3f}", headline=False),
    Metric("frc_0.5", "FRC 0.5", "x Nyquist", "{:.2f}", headline=True),
)
HEADLINE = tuple(metric for metric in METRICS if metric.headline)
METRIC = {metric.name: metric for metric in METRICS}


def image_metrics(
    truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Every metric of ``METRICS`` over ``mask``, in its order; the FRC curve."""
    data_range = float(np.ptp(truth[mask]))
    error = truth[mask] - estimate[mask]
    mse = float(np.mean(error**2))
    with np.errstate(divide="ignore"):  # identical images: PSNR is inf
        psnr = 10 * np.log10(data_range**2 / mse)
    frequency, curve = frc(truth, estimate, mask)
    scales = ssim_scales(truth, estimate, data_range, mask)
    scores = {
        "mae": float(np.mean(np.abs(error))),
        "mse": mse,
        "psnr": float(psnr),
        "ssim": scales[0],
        "ms_ssim": ms_ssim(scales),
        "frc_0.5": frc_crossing(frequency, curve, TRUTH_FRC_THRESHOLD),
    }
    return scores, frequency, curve


def measure_aligned(
    truth: np.ndarray, aligned: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """Amplitude and phase scores of an aligned crop against the truth's crop."""
    amplitude, phase = amplitude_and_phase(truth, aligned)
    amplitude_scores, _, amplitude_frc = image_metrics(*amplitude, mask)
    phase_scores, frequency, phase_frc = image_metrics(*phase, mask)
    return {
        "amplitude": amplitude_scores,
        "phase": phase_scores,
        "frc_curves": {
            "frequency_cycles_per_px": frequency.tolist(),
            "amplitude": amplitude_frc.tolist(),
            "phase": phase_frc.tolist(),
        },
    }


def compare(
    reconstruction: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    upsample_factor: int,
) -> dict[str, Any]:
    """Align, then measure amplitude and phase on the mask, beside the null reference."""
    alignment, aligned = align(reconstruction, truth, mask, upsample_factor)
    target, lit = crop(truth, alignment.region), crop(mask, alignment.region)
    scores = measure_aligned(target, aligned, lit)
    _, flat = null_reference(truth, mask)
    null = measure_aligned(target, flat, lit)
    return {
        "alignment": alignment.to_dict(),
        **scores,
        "null": {"amplitude": null["amplitude"], "phase": null["phase"]},
    }


def half_dataset_frc(
    first: np.ndarray, second: np.ndarray, mask: np.ndarray, upsample_factor: int
) -> dict[str, Any]:
    """FRC between two half-data reconstructions: 1/7 and half-bit crossings, curve."""
    alignment, aligned = align(second, first, mask, upsample_factor)
    region = alignment.region
    frequency, curve = frc(crop(first, region), aligned, crop(mask, region))
    half_bit = half_bit_threshold(aligned.shape)
    return {
        "frc_1/7": frc_crossing(frequency, curve, HALF_FRC_THRESHOLD),
        "frc_half_bit": frc_crossing(frequency, curve, half_bit),
        "shift_px": list(alignment.shift_px),
        "frequency_cycles_per_px": frequency.tolist(),
        "curve": curve.tolist(),
    }


def not_below_null(compared: Mapping[str, Any]) -> str | None:
    """Words for a phase error that is not below the null reference's (else None).

    Equal to a millionth counts as not below: a flat reconstruction scores the null's
    error up to rounding.
    """
    mae, null = compared["phase"]["mae"], compared["null"]["phase"]["mae"]
    if mae < null * (1 - 1e-6):
        return None
    return (
        f"phase MAE {mae:.4f} rad is not below the null reference {null:.4f} rad "
        "(a flat object, no reconstruction): nothing was recovered on the lit pixels"
    )


def rms_position_error(
    x: np.ndarray, y: np.ndarray, x_true: np.ndarray, y_true: np.ndarray
) -> tuple[float, tuple[float, float]]:
    """RMS distance (px) of positions from the true ones once their common shift
    ``(dy, dx)`` (a shift of the whole scan, which moves the object, not the fit) is
    removed; and that shift."""
    dx, dy = x - x_true, y - y_true
    shift = (float(dy.mean()), float(dx.mean()))
    rms = np.sqrt(np.mean((dx - shift[1]) ** 2 + (dy - shift[0]) ** 2))
    return float(rms), shift


def position_errors(
    recorded: tuple[np.ndarray, np.ndarray],
    refined: tuple[np.ndarray, np.ndarray],
    true: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The positions' RMS error before (as recorded) and after the reconstruction
    (as refined), each after removing its common shift: ``(x, y)`` pairs."""
    before, _ = rms_position_error(*recorded, *true)
    after, shift = rms_position_error(*refined, *true)
    return {
        "rms_error_before_px": before,
        "rms_error_after_px": after,
        "relative_change": after / before - 1 if before > 0 else None,
        "common_shift_after_px": list(shift),
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
