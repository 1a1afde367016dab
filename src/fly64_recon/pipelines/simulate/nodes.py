"""Nodes of the simulate pipeline: ``params:simulate`` in, DATA-001 arrays out."""

from __future__ import annotations

import json
import logging
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from fly64_recon.contract import read_metadata
from fly64_recon.pipelines.simulate import physics
from fly64_recon.science import beam
from fly64_recon.study import Job, spacing_threshold

SOURCE = "fly64_recon.simulate"
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


def make_probe(params: dict[str, Any]) -> np.ndarray:
    """The focused probe of ``params:simulate``."""
    return physics.make_probe(params["patch_size"], **params["probe"])


def make_object(params: dict[str, Any]) -> np.ndarray:
    """The seeded ground-truth object of ``params:simulate``."""
    return physics.make_object(
        tuple(params["object_shape"]),
        physics.object_rng(params["seed"]),
        **params["object"],
    )


def make_scan(params: dict[str, Any]) -> np.ndarray:
    """Probe-centre positions ``[y, x]`` of the configured scan pattern."""
    scan = params["scan"]
    shape = tuple(params["object_shape"])
    rng = physics.scan_rng(params["seed"])
    if scan["pattern"] == "fly":
        return physics.fly_scan(
            shape,
            params["patch_size"],
            scan["rows"],
            scan["points_per_row"],
            scan["jitter"],
            scan["margin"],
            rng,
        )
    if scan["pattern"] == "random":
        return physics.random_scan(
            shape, params["patch_size"], scan["n_positions"], scan["margin"], rng
        )
    raise ValueError(
        f"simulate.scan.pattern must be one of {physics.SCAN_PATTERNS}, "
        f"got {scan['pattern']!r}"
    )


def position_error(params: dict[str, Any]) -> float:
    """``simulate.scan.position_error``: std of the recorded positions' error, px."""
    error = float(params["scan"].get("position_error", 0.0))
    if not error >= 0:
        raise ValueError(f"simulate.scan.position_error must be >= 0 px, got {error!r}")
    return error


def recorded_scan(scan: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The positions the files record: the true scan, or it with the position error.

    The error is drawn from the simulation seed alone, so every dose records the same
    positions (one instrument, one scan)."""
    error = position_error(params)
    if error == 0:
        return scan
    return physics.recorded_positions(
        scan,
        error,
        tuple(params["object_shape"]),
        params["patch_size"],
        params["scan"]["margin"],
        physics.position_error_rng(params["seed"]),
    )


def simulate_dose(
    probe: np.ndarray,
    obj: np.ndarray,
    scan: np.ndarray,
    params: dict[str, Any],
    *,
    dose: float,
    splits: tuple[str, ...],
) -> dict[str, dict[str, np.ndarray]]:
    """The Phase C files of one dose: the whole scan's Poisson patterns, split by y.

    The patterns are made at the true positions; the files record them with
    ``simulate.scan.position_error`` (and the true ones as ``xcoords_true``/``ycoords_true``
    when that is above 0).
    """
    recorded = recorded_scan(scan, params)
    train, test, middle = physics.split_by_y(scan)
    indices = {"train": train, "test": test}
    # Simulating split by split keeps each split's patterns contiguous (no copies).
    order = np.concatenate([train, test])
    amplitudes, scale = physics.simulate_amplitudes(
        probe,
        obj,
        scan[order],
        dose,
        physics.noise_keys(params["seed"], dose, order),
        params["chunk_size"],
    )
    rows = {"train": slice(0, len(train)), "test": slice(len(train), len(scan))}
    metadata = {
        "source": SOURCE,
        "dose": float(dose),
        "seed": params["seed"],
        "noise_rng": "per pattern: numpy.random.default_rng([seed, 3, "
        "<float64 bits of dose as uint64>, scan_index]).poisson",
        "intensity_scale": scale,
        "diffraction": "sqrt(photon counts) / intensity_scale, DC at the centre",
        "scan_pattern": params["scan"]["pattern"],
        "split_y": middle,
        "patch_size": probe.shape[-1],
        "object_shape": list(obj.shape),
        "n_scan_positions": len(scan),
    }
    if recorded is not scan:  # a file without a position error stays as it was
        metadata["position_error_px"] = position_error(params)
    return {
        split: _phase_c_file(
            amplitudes[rows[split]],
            probe,
            obj,
            (scan, recorded),
            indices[split],
            params["write_ground_truth_patches"],
            {
                **metadata,
                "split": split,
                "n_positions": len(indices[split]),
                **scan_metadata(
                    probe,
                    recorded[indices[split], 1],
                    recorded[indices[split], 0],
                    obj.shape,
                    dose,
                    params["illumination_fraction"],
                    f"baseline view of the {split} split at dose {dose:g}",
                ),
            },
        )
        for split in splits
    }


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
    keep, strategy = physics.select_spaced(
        positions, threshold, params["min_view_positions"]
    )
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


def _phase_c_file(
    amplitudes: np.ndarray,
    probe: np.ndarray,
    obj: np.ndarray,
    positions: tuple[np.ndarray, np.ndarray],
    index: np.ndarray,
    with_patches: bool,
    metadata: dict[str, Any],
) -> dict[str, np.ndarray]:
    """One Phase C split as DATA-001 arrays; ``positions``: the true and the recorded."""
    scan, recorded = positions
    arrays = {
        "diffraction": amplitudes,
        "probeGuess": probe,
        "objectGuess": obj,
        "xcoords": recorded[index, 1],
        "ycoords": recorded[index, 0],
        "scan_index": index.astype(np.int64),
    }
    if recorded is not scan:
        arrays["xcoords_true"] = scan[index, 1]
        arrays["ycoords_true"] = scan[index, 0]
    if with_patches:
        arrays["Y"] = np.ascontiguousarray(
            physics.extract_patches(obj, scan[index], probe.shape[-1])
        )
    return {**arrays, "_metadata": metadata_array(metadata)}
