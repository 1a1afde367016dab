"""DATA-001: what an NPZ of the study must hold, checked in one call.

``validate`` collects every problem of a file and raises one ``ContractError`` that
lists them all; it returns the warnings (and logs each one with the file's path). Checks
that depend on a missing or malformed key are skipped, so one broken key never hides the
others. Beyond the DESIGN.md table, probeGuess and objectGuess must be finite too.

Position convention: ``xcoords``/``ycoords`` are probe-centre positions in object
pixels. The footprint of position (x, y) is
``objectGuess[y - N/2 : y + N/2, x - N/2 : x + N/2]`` for an N x N probe (fractional
coordinates shift it sub-pixel). It lies inside an H x W object when x - N/2 >= 0 and
x + N/2 <= W, likewise y with H, within ``FOOTPRINT_TOLERANCE_PX``.

Optional keys, checked when present: ``Y`` (ground-truth patches, (n, N, N)),
``scan_index`` (integer, (n,)), ``xcoords_start``/``ycoords_start`` and
``xcoords_true``/``ycoords_true`` (real, finite, (n,)). ``xcoords_true``/``ycoords_true``
are the true positions of a file whose ``xcoords``/``ycoords`` were recorded with an
error (``simulate.scan.position_error``), given as a pair; the evaluation measures the
positions' error before and after position correction against them.

Intensity saved as amplitude, the mistake this contract exists for, is caught in two ways:

* With ``intensity_scale`` and ``dose`` in ``_metadata`` (simulated files), the counts are
  ``(amplitude * intensity_scale) ** 2`` and their mean per-pattern total must equal the
  dose. The mean of n Poisson totals has a relative spread of 1/sqrt(dose * n); subsets
  of a scan (splits, views) also differ from the whole scan's mean with the object's
  transmission. So a file passes while measured / dose lies within a factor
  ``TOTALS_FACTOR * exp(TOTALS_SIGMAS / sqrt(dose * n))`` (2x, widened by five Poisson
  standard deviations). Intensity saved instead is off by orders of magnitude, unless
  the normalised intensities happen to average about 1 at the bright pixels; then the
  photon counts decide: ``(amplitude * intensity_scale) ** 2`` is whole for amplitude,
  ``amplitude * intensity_scale ** 2`` for intensity.
* Without them, a heuristic warns (never errors) on positive evidence only. Photon data
  are quantised: amplitudes are ``c * sqrt(k)`` and intensities ``c * k`` for integer
  counts k and an unknown scale c. Divided by their smallest positive value (a single
  photon, in practice), intensities become integers that are not all perfect squares;
  amplitudes do not (sqrt(2), sqrt(3), ...). Values that fit the intensity ladder get a
  warning. Continuous data (noise-free simulations, background-corrected measurements)
  get none. Peak-to-mean ratios are not used: for realistic probes they overlap between
  amplitude at low dose and intensity at high dose, so measured amplitudes of tens at
  the centre validate silently.

Cost: the full diffraction stack is read once, in cache-sized chunks (sum of squares and
minimum; non-finite values surface as a non-finite sum), with no full-size temporaries;
counting NaN, Inf and negatives happens only when that pass finds them. The heuristic
looks at ``HEURISTIC_SAMPLE_PATTERNS`` evenly spaced patterns.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = (
    "diffraction",
    "probeGuess",
    "objectGuess",
    "xcoords",
    "ycoords",
)
# Optional: the true probe-centre positions of a file whose xcoords/ycoords carry a
# position error (simulated), to measure position correction against.
TRUE_POSITION_KEYS = ("xcoords_true", "ycoords_true")
# Optional: bad_pixels, bool (N, N), True where the detector did not measure (a
# measured scan's mask): pty-chi leaves them out of the fit.
AMPLITUDE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))
FOOTPRINT_TOLERANCE_PX = 1e-6
TOTALS_FACTOR = 2.0
TOTALS_SIGMAS = 5.0
HEURISTIC_SAMPLE_PATTERNS = 16
COUNTS_CHECK_BELOW = 1e4  # where float32 still resolves single photons
# The patterns' energy sits this many times closer to the corners than to the centre:
# the DC term is in the corner (not fftshifted).
CORNER_DC_RATIO = 2.0
MIN_CENTRE_CHECK_SIZE = 8  # smaller patterns cannot tell centre from corner
# A probe this many times weaker than the patterns (sum |probe|^2 vs the mean
# sum diffraction^2) is numerical noise, not a probe estimate.
NEAR_ZERO_PROBE_RATIO = 1e-12
# sum |probeGuess|^2 against the patterns' mean sum diffraction^2 (their power in the
# file's units): about 1.4 in the simulated study (the object absorbs a little); a
# probe this many times stronger does not belong to these patterns.
PROBE_POWER_FACTOR = 100.0
# A pattern's intensity spread along one axis, as a fraction of a uniform spread
# (N^2 / 12): about 0.22 on both axes for the study's patterns, near 1 along the
# frame axis of an (N, N, n) stack read as (n, N, N).
EVEN_SPREAD = 0.7
# A detector's clipped pixels share its largest value; a pattern's brightest pixel is
# otherwise nearly alone there (a few, at low counts).
SATURATED_FRACTION = 0.01
# Exactly repeated positions: an error from this fraction of the scan on, else a warning.
REPEATED_POSITIONS_FRACTION = 0.1
_CHUNK_ELEMENTS = 2**16  # 256 KiB of float32: the reductions of a chunk share the cache


@dataclass(frozen=True)
class Problem:
    """One way a file breaks the contract."""

    key: str
    message: str


class ContractError(ValueError):
    """A DATA-001 file breaks the contract."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p.key}: {p.message}" for p in self.problems)
        super().__init__(f"{self.path} breaks the DATA-001 contract:\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their args; ours are (path, problems), not the message.
        return (type(self), (self.path, self.problems))


def validate(arrays: Mapping[str, np.ndarray], path: str) -> list[str]:
    """Check a DATA-001 file; raise ContractError listing every problem, return warnings."""
    problems = [
        Problem(k, "required key is missing") for k in REQUIRED_KEYS if k not in arrays
    ]
    warnings: list[str] = []
    diffraction = _get(arrays, "diffraction")
    n, size = _pattern_geometry(diffraction)
    stats = None
    if diffraction is not None:
        if diffraction.dtype in AMPLITUDE_DTYPES:
            stats = _reduce(diffraction)
        problems += _diffraction_problems(diffraction, stats)

    clean = diffraction is not None and stats is not None and stats.is_clean() and n
    if clean and 0 < len(stats.empty) < n:
        warnings.append(_empty_warning(stats.empty, n))
    if clean:
        problems += _centre_problems(diffraction)

    probe = _get(arrays, "probeGuess")
    if probe is not None:
        problems += _probe_problems(probe, size)
        if clean and probe.dtype.kind == "c" and np.isfinite(probe).all():
            found, warned = _probe_against_patterns(probe, stats.sum_of_squares / n)
            problems, warnings = problems + found, warnings + warned
        if size is None and _is_square_2d(probe):
            size = probe.shape[0]
    problems += _position_problems(arrays, n, size)
    problems += _optional_problems(arrays, n, size)

    metadata, metadata_problems = _metadata(arrays)
    problems += metadata_problems
    repeated, repeat_warnings = _repeated_positions(arrays, n)
    problems += repeated
    warnings += repeat_warnings
    if clean:
        if "intensity_scale" in metadata and "dose" in metadata:
            problems += _totals_problems(metadata, stats.sum_of_squares / n, n)
            problems += _counts_problems(diffraction, metadata)
        else:
            warnings += _heuristic_warnings(diffraction)

    if problems:
        raise ContractError(path, problems)
    for warning in warnings:
        logger.warning("%s: %s", path, warning)
    return warnings


def read_metadata(arrays: Mapping[str, np.ndarray]) -> dict:
    """The parsed ``_metadata`` JSON ({} when absent). Raises ValueError if not a JSON object."""
    if "_metadata" not in arrays:
        return {}
    raw = np.asarray(arrays["_metadata"])
    if raw.dtype.kind not in "US" or raw.size != 1:
        raise ValueError(
            f"_metadata must be one JSON string, got dtype {raw.dtype} shape {raw.shape}"
        )
    text = raw.reshape(()).item()
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"_metadata is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"_metadata must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class _Reduction:
    """What one pass over a real floating diffraction stack found."""

    sum_of_squares: float
    nan: int
    inf: int
    negative: int
    minimum: float
    size: int
    empty: tuple[int, ...]  # the patterns (first axis) that hold only zeros

    def is_clean(self) -> bool:
        return self.nan == 0 and self.inf == 0 and self.negative == 0


def _get(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    return np.asarray(arrays[key]) if key in arrays else None


def _is_square_2d(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[0] == a.shape[1]


def _pattern_geometry(diffraction: np.ndarray | None) -> tuple[int | None, int | None]:
    """(n, N) as far as the diffraction shape tells them."""
    if diffraction is None or diffraction.ndim != 3:
        return None, None
    n, rows, cols = diffraction.shape
    return n, (rows if rows == cols else None)


def _chunks(a: np.ndarray) -> Iterator[np.ndarray]:
    """Flat blocks of whole rows of ``a``; only a non-contiguous block is copied."""
    if a.ndim == 0:
        yield a.reshape(1)
        return
    rows = max(1, _CHUNK_ELEMENTS // max(1, math.prod(a.shape[1:])))
    for start in range(0, a.shape[0], rows):
        yield a[start : start + rows].reshape(-1)


def _reduce(a: np.ndarray) -> _Reduction:
    """Sum of squares and minimum in one pass; NaN and Inf are counted only when the
    sum comes out non-finite (fmin skips NaN, so the minimum stays meaningful)."""
    total, minimum, empty, start = 0.0, np.inf, [], 0
    per_row = max(1, math.prod(a.shape[1:])) if a.ndim else 1
    with np.errstate(over="ignore"):  # an overflow is detected and handled below
        for chunk in _chunks(a):
            if chunk.size:
                total += float(np.dot(chunk, chunk))
                minimum = np.fmin(minimum, np.fmin.reduce(chunk))
                rows = chunk.reshape(-1, per_row)
                empty += (start + np.flatnonzero(~rows.any(axis=1))).tolist()
                start += len(rows)
    nan = inf = 0
    if not math.isfinite(total):
        nan = sum(int(np.count_nonzero(np.isnan(c))) for c in _chunks(a))
        inf = sum(int(np.count_nonzero(np.isinf(c))) for c in _chunks(a))
        if nan == inf == 0:  # a float32 square overflowed: redo the sum in float64
            with np.errstate(over="ignore"):  # beyond float64: the total stays inf
                total = sum(
                    float(np.sum(np.square(c, dtype=np.float64))) for c in _chunks(a)
                )
    negative = 0
    if minimum < 0:
        negative = sum(int(np.count_nonzero(c < 0)) for c in _chunks(a))
    return _Reduction(total, nan, inf, negative, float(minimum), a.size, tuple(empty))


def _diffraction_problems(d: np.ndarray, stats: _Reduction | None) -> list[Problem]:
    problems = []
    if d.dtype not in AMPLITUDE_DTYPES:
        problems.append(
            f"dtype {d.dtype} is not real floating (float32 expected, float64 tolerated)"
        )
    if d.ndim != 3:
        problems.append(f"shape {d.shape} is not 3-D (n, N, N)")
    else:
        n, rows, cols = d.shape
        if rows != cols:
            problems.append(f"patterns are {rows} x {cols}, not square (n, N, N)")
        if n == 0:
            problems.append(f"holds no patterns (shape {d.shape}); n >= 1 required")
    if stats is not None:
        if stats.nan or stats.inf:
            problems.append(
                f"{stats.nan + stats.inf} of {stats.size} values are not finite "
                f"({stats.nan} NaN, {stats.inf} Inf)"
            )
        if stats.sum_of_squares == 0 and stats.size:
            problems.append("every value is zero: no pattern recorded a photon")
        if stats.negative:
            problems.append(
                f"{stats.negative} of {stats.size} values are negative "
                f"(min {stats.minimum:.4g}); amplitudes are non-negative"
            )
    return [Problem("diffraction", m) for m in problems]


def _mean_distance_from_centre(intensity: np.ndarray) -> float:
    """Intensity-weighted mean distance of a pattern's pixels from pixel (N/2, N/2)."""
    rows, cols = np.indices(intensity.shape)
    centre = np.array(intensity.shape) // 2
    radius = np.hypot(rows - centre[0], cols - centre[1])
    return float((intensity * radius).sum() / intensity.sum())


def _centre_problems(diffraction: np.ndarray) -> list[Problem]:
    """DATA-001 patterns have their DC term at the centre; unshifted ones at a corner."""
    size = diffraction.shape[-1]
    if size < MIN_CENTRE_CHECK_SIZE:
        return []
    picks = np.unique(
        np.linspace(0, len(diffraction) - 1, HEURISTIC_SAMPLE_PATTERNS).astype(int)
    )
    mean = np.mean(np.square(diffraction[picks], dtype=np.float64), axis=0)
    if mean.sum() <= 0:
        return []
    given = _mean_distance_from_centre(mean)
    swapped = _mean_distance_from_centre(np.fft.fftshift(mean))
    if given > CORNER_DC_RATIO * swapped:
        return [
            Problem(
                "diffraction",
                f"the patterns' intensity lies {given / swapped:.1f}x closer to the "
                "corners than to the centre: the DC term is in the corner; DATA-001 "
                "stores it at the centre (apply numpy.fft.fftshift over the last two "
                "axes)",
            )
        ]
    saturated = _saturation_problems(diffraction[picks])
    if saturated:
        return saturated
    spread = _spread(mean)
    if max(spread) > EVEN_SPREAD and min(spread) < max(spread) / 3:
        axis = 1 + int(np.argmax(spread))
        return [
            Problem(
                "diffraction",
                f"the intensity spreads evenly along axis {axis} "
                f"({max(spread):.2f} of a uniform spread, {min(spread):.2f} along the "
                "other): these are not patterns with their DC term at the centre; an "
                "(N, N, n) stack stored as (n, N, N)? (numpy.moveaxis(d, -1, 0))",
            )
        ]
    return []


def _empty_warning(empty: tuple[int, ...], n: int) -> str:
    shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
    return (
        f"diffraction: {len(empty)} of {n} patterns hold only zeros (dead frames? "
        f"index {shown}): fitted as patterns that recorded no photon"
    )


def _saturation_problems(sample: np.ndarray) -> list[Problem]:
    """Many pixels at the largest value: a saturated detector, clipped."""
    top = float(sample.max())
    at_top = int(np.count_nonzero(sample == top))
    # Several per pattern at least: a pattern's brightest pixels may tie at low counts.
    enough = max(SATURATED_FRACTION * sample.size, 4 * len(sample))
    if top <= 0 or at_top < enough:
        return []
    return [
        Problem(
            "diffraction",
            f"{at_top} of {sample.size} pixels (of {len(sample)} patterns sampled) sit "
            f"at the largest value {top:.6g}: saturated, clipped patterns; mask the "
            "saturated pixels or leave those patterns out",
        )
    ]


def _spread(intensity: np.ndarray) -> tuple[float, float]:
    """The intensity's variance about the centre along each axis, as a fraction of a
    uniform spread's (N^2 / 12)."""
    weights = intensity / intensity.sum()
    size = intensity.shape[0]
    offsets = (np.arange(size) - size // 2) ** 2 / (size * size / 12)
    return float(weights.sum(1) @ offsets), float(weights.sum(0) @ offsets)


def _probe_power_problems(probe: np.ndarray, pattern_power: float) -> list[Problem]:
    """An all-zero or near-zero probe cannot start a reconstruction."""
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    if power == 0:
        return [Problem("probeGuess", "is all zero: there is no probe to start from")]
    if pattern_power > 0 and power < NEAR_ZERO_PROBE_RATIO * pattern_power:
        return [
            Problem(
                "probeGuess",
                f"is near zero: sum |probe|^2 = {power:.3g}, {pattern_power / power:.3g}"
                f" times below the patterns' mean sum diffraction^2 "
                f"({pattern_power:.3g}); the probe estimate is numerical noise",
            )
        ]
    return []


def _probe_against_patterns(
    probe: np.ndarray, pattern_power: float
) -> tuple[list[Problem], list[str]]:
    """The probe beside the patterns: its power, where its energy is."""
    problems = _probe_power_problems(probe, pattern_power)
    if _is_square_2d(probe):
        problems += _probe_centre_problems(probe)
    return problems, _probe_power_warnings(probe, pattern_power)


def _probe_power_warnings(probe: np.ndarray, pattern_power: float) -> list[str]:
    """A probe far stronger than the patterns does not belong to them: LSQML scales a
    weak one up in its first epoch, but from a strong one the object stays flat."""
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    if pattern_power <= 0 or power <= PROBE_POWER_FACTOR * pattern_power:
        return []
    return [
        f"probeGuess: its power sum |probe|^2 = {power:.3g} is "
        f"{power / pattern_power:.3g}x the patterns' mean sum diffraction^2 "
        f"({pattern_power:.3g}): it does not belong to these patterns (scale it to "
        "them); a reconstruction from it is judged by its fit to the patterns"
    ]


def _probe_centre_problems(probe: np.ndarray) -> list[Problem]:
    """A probe has its energy at its centre, as the patterns their DC term."""
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    if probe.shape[-1] < MIN_CENTRE_CHECK_SIZE or not intensity.any():
        return []  # an all-zero probe is refused on its own
    given = _mean_distance_from_centre(intensity)
    swapped = _mean_distance_from_centre(np.fft.fftshift(intensity))
    if given <= CORNER_DC_RATIO * swapped:
        return []
    return [
        Problem(
            "probeGuess",
            f"its energy lies {given / swapped:.1f}x closer to the corners than to the "
            "centre: the probe is stored fftshifted; DATA-001 stores it centred "
            "(apply numpy.fft.ifftshift)",
        )
    ]


def _repeated_positions(
    arrays: Mapping[str, np.ndarray], n: int | None
) -> tuple[list[Problem], list[str]]:
    """Positions given more than once: many are an error, a few a warning."""
    x, y = _get(arrays, "xcoords"), _get(arrays, "ycoords")
    usable = (
        x is not None
        and y is not None
        and x.ndim == y.ndim == 1
        and len(x) == len(y) >= 2
        and x.dtype.kind in "iuf"
        and y.dtype.kind in "iuf"
    )
    if not usable:
        return [], []
    repeats = len(x) - len(np.unique(np.column_stack([x, y]), axis=0))
    if repeats == 0:
        return [], []
    message = (
        f"{repeats} of {len(x)} positions repeat an earlier (xcoords, ycoords) exactly"
    )
    if repeats >= 2 and repeats >= REPEATED_POSITIONS_FRACTION * len(x):
        hint = "; a scan visits each position once (lost or copied coordinates?)"
        return [Problem("xcoords", message + hint)], []
    return [], [f"xcoords/ycoords: {message}"]


def _probe_problems(probe: np.ndarray, size: int | None) -> list[Problem]:
    problems = []
    if probe.dtype not in COMPLEX_DTYPES:
        problems.append(
            f"dtype {probe.dtype} is not complex (complex64 expected, complex128 tolerated)"
        )
    if probe.ndim != 2:
        problems.append(f"shape {probe.shape} is not 2-D (N, N)")
    elif size is not None and probe.shape != (size, size):
        problems.append(
            f"shape {probe.shape} differs from the pattern size ({size}, {size})"
        )
    elif not _is_square_2d(probe):
        problems.append(f"shape {probe.shape} is not square (N, N)")
    problems += _nonfinite(probe)
    return [Problem("probeGuess", m) for m in problems]


def _object_problems(obj: np.ndarray, size: int | None) -> list[Problem]:
    problems = []
    if obj.dtype not in COMPLEX_DTYPES:
        problems.append(
            f"dtype {obj.dtype} is not complex (complex64 expected, complex128 tolerated)"
        )
    if obj.ndim != 2:
        problems.append(f"shape {obj.shape} is not 2-D (H, W)")
    elif size is not None and (obj.shape[0] < size or obj.shape[1] < size):
        problems.append(f"shape {obj.shape} is smaller than the {size} x {size} probe")
    problems += _nonfinite(obj)
    return [Problem("objectGuess", m) for m in problems]


def _vector_problems(
    key: str,
    a: np.ndarray,
    n: int | None,
    kinds: str = "iuf",
    what: str = "real numeric",
) -> list[Problem]:
    """Per-position vectors: dtype kind, shape (n,), finite."""
    problems = []
    if a.dtype.kind not in kinds:
        problems.append(f"dtype {a.dtype} is not {what}")
    if a.ndim != 1:
        problems.append(f"shape {a.shape} is not 1-D (n,)")
    elif n is not None and len(a) != n:
        problems.append(f"length {len(a)} differs from the {n} diffraction patterns")
    problems += _nonfinite(a)
    return [Problem(key, m) for m in problems]


def _nonfinite(a: np.ndarray) -> list[str]:
    """A problem message when a small floating or complex array holds NaN or Inf."""
    if a.dtype.kind not in "fc":
        return []
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    return [f"{bad} of {a.size} values are not finite (NaN or Inf)"] if bad else []


def _position_problems(
    arrays: Mapping[str, np.ndarray], n: int | None, size: int | None
) -> list[Problem]:
    """Coordinates and object, then the footprints where those allow a check."""
    x, y, obj = (_get(arrays, k) for k in ("xcoords", "ycoords", "objectGuess"))
    coord_problems = [
        p
        for key, a in (("xcoords", x), ("ycoords", y))
        if a is not None
        for p in _vector_problems(key, a, n)
    ]
    if obj is None:
        return coord_problems
    problems = coord_problems + _object_problems(obj, size)
    if (
        x is not None
        and y is not None
        and not coord_problems
        and x.shape == y.shape
        and obj.ndim == 2
        and size is not None
    ):
        problems += _footprint_problems(obj.shape, x, y, size)
    return problems


def _footprint_problems(
    object_shape: tuple[int, int], x: np.ndarray, y: np.ndarray, size: int
) -> list[Problem]:
    height, width = object_shape
    half = size / 2
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    overshoot = np.maximum.reduce(
        [half - x, x + half - width, half - y, y + half - height, np.zeros_like(x)]
    )
    outside = overshoot > FOOTPRINT_TOLERANCE_PX
    if not outside.any():
        return []
    worst = int(np.argmax(overshoot))
    return [
        Problem(
            "objectGuess",
            f"{int(outside.sum())} of {len(x)} probe footprints ({size} x {size}, "
            f"centred on xcoords/ycoords) fall outside the {height} x {width} object; "
            f"worst: position {worst} at (x={x[worst]:.6g}, y={y[worst]:.6g}) "
            f"by {overshoot[worst]:.6g} px",
        )
    ]


def _optional_problems(
    arrays: Mapping[str, np.ndarray], n: int | None, size: int | None
) -> list[Problem]:
    problems = []
    y = _get(arrays, "Y")
    if y is not None:
        if y.dtype.kind not in "fc":
            problems.append(
                Problem("Y", f"dtype {y.dtype} is not complex or real floating")
            )
        if y.ndim != 3:
            problems.append(Problem("Y", f"shape {y.shape} is not 3-D (n, N, N)"))
        elif n is not None and size is not None and y.shape != (n, size, size):
            problems.append(
                Problem("Y", f"shape {y.shape} differs from ({n}, {size}, {size})")
            )
    bad_pixels = _get(arrays, "bad_pixels")
    if bad_pixels is not None:
        if bad_pixels.dtype != np.bool_:
            problems.append(
                Problem("bad_pixels", f"dtype {bad_pixels.dtype} is not bool")
            )
        if size is not None and bad_pixels.shape != (size, size):
            problems.append(
                Problem(
                    "bad_pixels",
                    f"shape {bad_pixels.shape} is not the patterns' ({size}, {size})",
                )
            )
    scan_index = _get(arrays, "scan_index")
    if scan_index is not None:
        problems += _vector_problems("scan_index", scan_index, n, "iu", "integer")
    for key in ("xcoords_start", "ycoords_start", *TRUE_POSITION_KEYS):
        a = _get(arrays, key)
        if a is not None:
            problems += _vector_problems(key, a, n)
    present = [key for key in TRUE_POSITION_KEYS if key in arrays]
    if len(present) == 1:
        (other,) = set(TRUE_POSITION_KEYS) - set(present)
        problems.append(
            Problem(present[0], f"the true positions come in pairs: {other} is missing")
        )
    return problems


def _metadata(arrays: Mapping[str, np.ndarray]) -> tuple[dict, list[Problem]]:
    try:
        return read_metadata(arrays), []
    except ValueError as e:
        return {}, [Problem("_metadata", str(e).removeprefix("_metadata "))]


def _positive_number(metadata: dict, key: str) -> float | None:
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _totals_problems(metadata: dict, mean_total: float, n: int) -> list[Problem]:
    """Counts = (amplitude * intensity_scale)**2 must total the dose per pattern on average."""
    scale = _positive_number(metadata, "intensity_scale")
    dose = _positive_number(metadata, "dose")
    bad = [
        Problem(
            "_metadata", f"{k} must be a positive finite number, got {metadata[k]!r}"
        )
        for k, v in (("intensity_scale", scale), ("dose", dose))
        if v is None
    ]
    if bad:
        return bad
    measured = mean_total * scale**2
    allowed = TOTALS_FACTOR * math.exp(TOTALS_SIGMAS / math.sqrt(dose * n))
    if dose / allowed <= measured <= dose * allowed:
        return []
    return [
        Problem(
            "diffraction",
            f"mean per-pattern total of (amplitude * intensity_scale)^2 is {measured:.4g} "
            f"counts but the dose is {dose:.4g} (ratio {measured / dose:.3g}, allowed "
            f"within a factor {allowed:.3g}): looks like intensity saved as amplitude, "
            "or intensity_scale/dose do not belong to these data",
        )
    ]


def _sampled_positive(diffraction: np.ndarray) -> np.ndarray:
    """The positive values of ``HEURISTIC_SAMPLE_PATTERNS`` evenly spaced patterns."""
    n = diffraction.shape[0]
    picks = np.unique(
        np.linspace(0, n - 1, min(n, HEURISTIC_SAMPLE_PATTERNS)).astype(int)
    )
    values = diffraction[picks].astype(np.float64).ravel()
    return values[values > 0]


def _whole_counts(values: np.ndarray) -> bool:
    """All values below ``COUNTS_CHECK_BELOW`` are whole numbers (float32 rounding allowed)."""
    low = values[values < COUNTS_CHECK_BELOW]
    return low.size > 0 and bool(np.all(np.abs(low - np.rint(low)) <= 1e-2))


def _counts_problems(diffraction: np.ndarray, metadata: dict) -> list[Problem]:
    """With a known scale, photon counts tell amplitude from intensity exactly.

    Amplitude is sqrt(counts) / scale, so (amplitude * scale)**2 is whole; intensity
    saved instead is counts / scale**2, so amplitude * scale**2 is whole and its square
    is not. The totals check alone misses this when amplitudes peak near 1.
    """
    scale = _positive_number(metadata, "intensity_scale")
    values = _sampled_positive(diffraction)
    if scale is None or scale == 1.0 or values.size == 0:
        return []
    if _whole_counts((values * scale) ** 2) or not _whole_counts(values * scale**2):
        return []
    return [
        Problem(
            "diffraction",
            "amplitude * intensity_scale^2 gives whole photon counts but "
            "(amplitude * intensity_scale)^2 does not: looks like intensity saved as "
            "amplitude (amplitude is sqrt(counts) / intensity_scale)",
        )
    ]


def _heuristic_warnings(diffraction: np.ndarray) -> list[str]:
    """Warn when the values climb the photon-count ladder of intensities (see module doc)."""
    positive = _sampled_positive(diffraction)
    if positive.size == 0:
        return []
    ladder = positive / positive.min()
    steps = np.rint(ladder)
    # Float32 keeps ~7 digits: allow its rounding error on large ratios.
    if not np.all(np.abs(ladder - steps) <= 1e-4 + 1e-6 * ladder):
        return []
    roots = np.rint(np.sqrt(steps))
    if np.all(roots * roots == steps):
        return []
    return [
        "diffraction: the sampled values are integer multiples of their smallest positive "
        "value, not all perfect squares: they look like photon counts (intensity) saved "
        "as amplitude; amplitude is sqrt(counts)"
    ]
