"""Nodes of the simulate pipeline: ``params:simulate`` in, DATA-001 arrays out."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fly64_recon.pipelines.simulate import physics
from fly64_recon.science import views

SOURCE = "fly64_recon.simulate"
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
    train, test, middle = views.split_by_y(scan)
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
                **views.scan_metadata(
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
    return {**arrays, "_metadata": views.metadata_array(metadata)}
