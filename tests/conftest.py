"""Shared fixtures: tiny studies made by the project's own simulate code."""

import os

import numpy as np
import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


def tiny_simulate_params(
    patch_size: int = 32, object_size: int = 112, rows: int = 12
) -> dict:
    """``params:simulate`` for a small study that still reconstructs well."""
    return {
        "seed": 42,
        "patch_size": patch_size,
        "object_shape": [object_size, object_size],
        "probe": {"aperture": 0.25, "central_stop": 0.3, "beam_diameter": 0.4},
        "object": {
            "spokes": 12,
            "star_radius": 0.6,
            "blob_count": 10,
            "blob_sigma": [1.5, 10.0],
            "texture_sigma": 1.5,
            "weights": {"star": 0.5, "blobs": 0.35, "texture": 0.15},
            "min_amplitude": 0.5,
            "max_phase": 1.0,
        },
        "scan": {
            "pattern": "fly",
            "rows": rows,
            "points_per_row": rows,
            "n_positions": rows * rows,
            "jitter": 0.5,
            "margin": 1,
        },
        "chunk_size": 64,
        "min_view_positions": 4,
        "write_ground_truth_patches": False,
    }


def simulate_phase_c(params: dict, dose: float) -> dict[str, dict[str, np.ndarray]]:
    """The Phase C train/test files of one dose, by the simulate pipeline's nodes."""
    from fly64_recon.pipelines.simulate import nodes

    probe, obj = nodes.make_probe(params), nodes.make_object(params)
    scan = nodes.make_scan(params)
    return nodes.simulate_dose(
        probe, obj, scan, params, dose=dose, splits=("train", "test")
    )


@pytest.fixture(scope="session")
def known_object_study() -> dict:
    """A whole-scan file at dose 1e6 with its scanned region, for convergence tests."""
    from fly64_recon.contract import read_metadata

    files = simulate_phase_c(tiny_simulate_params(), 1e6)
    train, test = files["train"], files["test"]
    study = {
        key: np.concatenate([train[key], test[key]])
        for key in ("diffraction", "xcoords", "ycoords")
    }
    study["probeGuess"] = train["probeGuess"]
    study["objectGuess"] = train["objectGuess"]
    study["intensity_scale"] = read_metadata(train)["intensity_scale"]
    study["scanned"] = (
        slice(int(study["ycoords"].min()) + 4, int(study["ycoords"].max()) - 4),
        slice(int(study["xcoords"].min()) + 4, int(study["xcoords"].max()) - 4),
    )
    return study
