"""A measured scan as a DATA-001 study: amplitudes, object-pixel positions, a flat
object (no ground truth), a probe guess, split by y and thinned into the Phase D views
as the simulate pipeline makes them."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fly64_recon.contract import read_metadata
from fly64_recon.datasets.scan_file import MeasuredScan
from fly64_recon.science import views
from fly64_recon.science.geometry import GEOMETRY_KEYS, Geometry
from fly64_recon.study import Job, StudyFiles

logger = logging.getLogger(__name__)

SOURCE = "fly64_recon.ingest"
DOSE_DIGITS = (
    2  # a measured dose names a folder: 2 significant figures (12345 -> 1.2e4)
)


class IngestError(ValueError):
    """A measured scan that cannot become a study: names the file and the problem."""


@dataclass(frozen=True)
class ObjectFrame:
    """Where the scan's positions land on the object grid, in object pixels."""

    xcoords: np.ndarray
    ycoords: np.ndarray
    shape: tuple[int, int]
    centre_m: tuple[float, float]  # (y, x) of the scan's centre, metres


def measured_phase_c(
    scan: MeasuredScan,
    ingest: Mapping[str, Any],
    nominal_geometry: Mapping[str, Any],
    simulate_params: Mapping[str, Any],
) -> dict[str, dict[str, np.ndarray]]:
    """The scan's Phase C files, ``{split: DATA-001 arrays}``: train below the middle
    of the scanned y range, test at or above it."""
    counts, clipped = photon_counts(scan)
    size = counts.shape[-1]
    geometry, nominal = scan_geometry(scan, nominal_geometry)
    pixel_m = geometry.object_pixel_m(size)
    frame = object_frame(
        scan.positions_m,
        pixel_m,
        size,
        simulate_params["scan"]["margin"],
    )
    dose = ingest["dose"] or measured_dose(counts)
    diameter_m = ingest["probe_diameter_m"]
    probe, probe_origin = probe_guess(
        scan, counts, diameter_m / pixel_m if diameter_m else None
    )
    positions = np.stack([frame.ycoords, frame.xcoords], axis=1)
    train, test, middle = views.split_by_y(positions)
    metadata = {
        "source": SOURCE,
        "scan_file": scan.source,
        "reader": scan.reader,
        "ground_truth": False,
        "dose": float(dose),
        "mean_photons_per_pattern": float(counts.sum(axis=(1, 2)).mean()),
        "intensity_scale": 1.0,
        "diffraction": "sqrt(photon counts), DC at the centre; bad pixels 0",
        **geometry.to_dict(),
        "geometry_from_parameters": nominal,
        "object_pixel_m": pixel_m,
        "object_centre_x_m": frame.centre_m[1],
        "object_centre_y_m": frame.centre_m[0],
        "bad_pixels": int(scan.bad_pixels.sum()) if scan.bad_pixels is not None else 0,
        "negative_counts_clipped": clipped,
        "probe_guess": probe_origin,
        "split_y": middle,
        "patch_size": size,
        "object_shape": list(frame.shape),
        "n_scan_positions": len(counts),
    }
    amplitudes = np.sqrt(counts, dtype=np.float32)
    obj = np.ones(frame.shape, dtype=np.complex64)
    files = {}
    for split, rows in (("train", train), ("test", test)):
        arrays = {
            "diffraction": amplitudes[rows],
            "probeGuess": probe,
            "objectGuess": obj,
            "xcoords": frame.xcoords[rows],
            "ycoords": frame.ycoords[rows],
            "scan_index": rows.astype(np.int64),
        }
        if scan.bad_pixels is not None:
            arrays["bad_pixels"] = scan.bad_pixels
        files[split] = {
            **arrays,
            "_metadata": views.metadata_array(
                {
                    **metadata,
                    "split": split,
                    "n_positions": len(rows),
                    **views.scan_metadata(
                        probe,
                        frame.xcoords[rows],
                        frame.ycoords[rows],
                        frame.shape,
                        dose,
                        simulate_params["illumination_fraction"],
                        f"baseline view of the {split} split of {scan.source}",
                    ),
                }
            ),
        }
    return files


def photon_counts(scan: MeasuredScan) -> tuple[np.ndarray, int]:
    """The patterns as float32 counts, bad pixels 0; negative counts (a dark frame
    taken off) clipped to 0, and how many were. Square patterns with a position each."""
    counts = np.asarray(scan.counts, dtype=np.float32)
    n, height, width = counts.shape
    if height != width:
        raise IngestError(
            f"{scan.source}: patterns are {height} x {width}; DATA-001 and pty-chi "
            "take square patterns (crop them to N x N about the beam centre)"
        )
    if len(scan.positions_m) != n:
        raise IngestError(
            f"{scan.source}: {n} patterns but {len(scan.positions_m)} positions"
        )
    if not np.isfinite(counts).all() or not np.isfinite(scan.positions_m).all():
        raise IngestError(f"{scan.source}: patterns or positions are not all finite")
    if scan.bad_pixels is not None:
        if scan.bad_pixels.shape != (height, width):
            raise IngestError(
                f"{scan.source}: the detector mask is {scan.bad_pixels.shape}, the "
                f"patterns {height} x {width}"
            )
        counts[:, scan.bad_pixels] = 0
    negative = counts < 0
    clipped = int(negative.sum())
    counts[negative] = 0
    return counts, clipped


def scan_geometry(
    scan: MeasuredScan, nominal: Mapping[str, Any]
) -> tuple[Geometry, list[str]]:
    """The scan's geometry, the nominal parameters standing in for what its file does
    not state (named, and logged)."""
    missing = [key for key in GEOMETRY_KEYS if key not in scan.geometry]
    if missing:
        logger.warning(
            "%s does not state %s: the geometry parameters' values stand in",
            scan.source,
            ", ".join(missing),
        )
    return Geometry.of(scan.geometry, nominal), missing


def object_frame(
    positions_m: np.ndarray, pixel_m: float, size: int, margin: int
) -> ObjectFrame:
    """Positions in object pixels on a grid that holds every N x N footprint with
    ``margin`` pixels to spare; the scan's centre is the object's."""
    lowest, highest = positions_m.min(axis=0), positions_m.max(axis=0)
    centre = (lowest + highest) / 2
    span = (highest - lowest) / pixel_m
    shape = tuple(int(math.ceil(s)) + size + 2 * margin for s in span)
    pixels = (positions_m - centre) / pixel_m + (np.array(shape) - 1) / 2
    # DATA-001's footprint is [c - N/2, c + N/2): centre on the grid's middle pixel.
    return ObjectFrame(
        xcoords=pixels[:, 1],
        ycoords=pixels[:, 0],
        shape=(shape[0], shape[1]),
        centre_m=(float(centre[0]), float(centre[1])),
    )


def measured_dose(counts: np.ndarray) -> float:
    """The mean photons per pattern, to ``DOSE_DIGITS`` significant figures."""
    return float(f"{counts.sum(axis=(1, 2), dtype=np.float64).mean():.{DOSE_DIGITS}g}")


def probe_guess(
    scan: MeasuredScan, counts: np.ndarray, diameter_px: float | None
) -> tuple[np.ndarray, str]:
    """The file's probe; else a flat disc of ``diameter_px`` (the beam's size, which
    the scan's overlap is measured with); else the probe whose far field is the mean
    pattern's amplitude with a flat phase: a focus far smaller than a defocused beam,
    which pty-chi refines but whose overlap reads near 0. The latter two carry the
    patterns' power (orthonormal FFT, as the simulation's). Returns it and its origin."""
    if scan.probe is not None:
        return scan.probe.astype(np.complex64), "from the file"
    size = counts.shape[-1]
    power = counts.sum(axis=(1, 2), dtype=np.float64).mean()
    if diameter_px:
        y, x = np.indices((size, size)) - size // 2
        disc = (np.hypot(x, y) <= diameter_px / 2).astype(np.complex128)
        probe = disc * np.sqrt(power / disc.sum())
        return probe.astype(np.complex64), f"flat disc, {diameter_px:.4g} px across"
    amplitude = np.sqrt(counts.mean(axis=0, dtype=np.float64))
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(amplitude), norm="ortho"))
    return probe.astype(np.complex64), "mean pattern's amplitude, flat phase"


def measured_view(
    phase_c: Mapping[str, dict[str, np.ndarray]],
    simulate_params: dict[str, Any],
    *,
    view: str,
    overlap: float,
) -> dict[str, dict[str, np.ndarray]]:
    """A Phase D view of each split, selected as the simulate pipeline selects it."""
    return {
        split: views.select_view(arrays, simulate_params, view=view, overlap=overlap)
        for split, arrays in phase_c.items()
    }


def study_tree(
    phase_c: Mapping[str, dict[str, np.ndarray]],
    **views: Mapping[str, dict[str, np.ndarray]],
) -> StudyFiles:
    """Every file of the scan's study, by the job that reads it."""
    metadata = read_metadata(phase_c["train"])
    files = {"baseline": phase_c, **views}
    return StudyFiles(
        dose=metadata["dose"],
        source=metadata["scan_file"],
        files={
            Job(metadata["dose"], view, split): arrays
            for view, splits in files.items()
            for split, arrays in splits.items()
        },
    )
