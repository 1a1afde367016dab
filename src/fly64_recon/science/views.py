"""The study's shape, simulated or measured alike: a scan split by y into train and
test, and the Phase D views that keep the positions at least a spacing apart (the
nearest-neighbour rule, greedy when too few pass), each file's metadata saying what
its scan measures (overlap, photons per lit pixel).

Positions are ``(n, 2)`` float64 ``[y, x]`` probe centres in object pixels.
"""

from __future__ import annotations

import json
import logging
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from fly64_recon.contract import read_metadata
from fly64_recon.science import beam
from fly64_recon.study import Job, spacing_threshold

# Keys whose first axis runs over scan positions; a view subsets exactly these.
PER_POSITION_KEYS = (
    "diffraction",
    "xcoords",
    "ycoords",
    "xcoords_true",
    "ycoords_true",
    "scan_index",
    "Y",
)

logger = logging.getLogger(__name__)


def split_by_y(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Indices with y below and at-or-above the midpoint of the scanned y range."""
    y = positions[:, 0]
    middle = float((y.min() + y.max()) / 2)
    return np.flatnonzero(y < middle), np.flatnonzero(y >= middle), middle


def nearest_neighbour_mask(positions: np.ndarray, threshold: float) -> np.ndarray:
    """Positions whose nearest neighbour is at least ``threshold`` away."""
    if len(positions) < 2:
        return np.ones(len(positions), dtype=bool)
    distance, _ = cKDTree(positions).query(positions, k=2)
    return distance[:, 1] >= threshold


def greedy_selection(positions: np.ndarray, threshold: float) -> np.ndarray:
    """Visit positions by y then x; accept one at least ``threshold`` from all accepted.

    Returns the accepted indices in ascending (scan) order.
    """
    tree = cKDTree(positions)
    blocked = np.zeros(len(positions), dtype=bool)
    accepted = []
    for i in np.lexsort((positions[:, 1], positions[:, 0])):
        if blocked[i]:
            continue
        accepted.append(i)
        near = np.asarray(tree.query_ball_point(positions[i], threshold), dtype=int)
        gap = positions[near] - positions[i]
        blocked[near[np.sqrt((gap**2).sum(axis=1)) < threshold]] = True
    return np.sort(np.asarray(accepted, dtype=np.int64))


def select_spaced(
    positions: np.ndarray, threshold: float, min_positions: int
) -> tuple[np.ndarray, str]:
    """The spacing rule: nearest-neighbour filter, greedy when too few pass."""
    keep = np.flatnonzero(nearest_neighbour_mask(positions, threshold))
    if len(keep) >= min_positions:
        return keep, "nearest_neighbour"
    return greedy_selection(positions, threshold), "greedy"


def scan_metadata(
    probe: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    shape: tuple[int, int],
    dose: float,
    fraction: float,
    what: str,
) -> dict[str, float]:
    """The measured overlap and photons per lit pixel of a view, for its metadata."""
    measured = beam.describe_scan(probe, xcoords, ycoords, shape, dose, fraction)
    warning = beam.overlap_warning(measured["overlap"])
    if warning:
        logger.warning("%s: %s", what, warning)
    return {
        "measured_overlap": measured["overlap"],
        "probe_diameter_px": measured["probe_diameter_px"],
        "photons_per_px2": measured["photons_per_px2"],
        "lit_area_px": measured["lit_area_px"],
        "illumination_fraction": fraction,
    }


def select_view(
    phase_c: dict[str, np.ndarray],
    params: dict[str, Any],
    *,
    view: str,
    overlap: float,
) -> dict[str, np.ndarray]:
    """The Phase D file of one view: the Phase C positions that obey its spacing."""
    metadata = read_metadata(phase_c)
    positions = np.stack([phase_c["ycoords"], phase_c["xcoords"]], axis=1)
    threshold = spacing_threshold(overlap, phase_c["diffraction"].shape[-1])
    keep, strategy = select_spaced(positions, threshold, params["min_view_positions"])
    if len(keep) < params["min_view_positions"]:
        logger.warning(
            "%s view of the %s split at dose %g keeps %d positions, fewer than "
            "min_view_positions=%d",
            view,
            metadata["split"],
            metadata["dose"],
            len(keep),
            params["min_view_positions"],
        )
    source = Job(metadata["dose"], "baseline", metadata["split"]).input_relpath
    metadata.update(
        overlap_view=view,
        overlap_fraction=overlap,
        spacing_threshold=threshold,
        source_file=PurePosixPath(source).name,
        n_positions=len(keep),
        n_accepted=len(keep),
        n_rejected=len(positions) - len(keep),
        acceptance_rate=len(keep) / len(positions),
        selection_strategy=strategy,
        **scan_metadata(
            phase_c["probeGuess"],
            phase_c["xcoords"][keep],
            phase_c["ycoords"][keep],
            phase_c["objectGuess"].shape,
            metadata["dose"],
            params["illumination_fraction"],
            f"{view} view of the {metadata['split']} split at dose {metadata['dose']:g}",
        ),
    )
    arrays = {
        key: value[keep] if key in PER_POSITION_KEYS else value
        for key, value in phase_c.items()
    }
    return {**arrays, "_metadata": metadata_array(metadata)}


def metadata_array(metadata: dict[str, Any]) -> np.ndarray:
    """``_metadata`` as the 0-d unicode array DATA-001 stores."""
    return np.array(json.dumps(metadata))
