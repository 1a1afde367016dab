"""Shared fixtures: tiny studies made by the project's own simulate code."""

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


def tiny_simulate_params(
    patch_size: int = 32, object_size: int = 112, rows: int = 12
) -> dict:
    """``params:simulate`` for a small study that still reconstructs well."""
    return {
        "seed": 42,
        "patch_size": patch_size,
        "object_shape": [object_size, object_size],
        # A beam wider than the scan step (FWHM 8 px at N = 16, 20 px at N = 32): overlap.
        "probe": {"aperture": 0.5, "central_stop": 0.3, "beam_diameter": 0.8},
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
        "illumination_fraction": 0.1,
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


# A tiny copy of the Kedro project, for end-to-end `kedro run` tests (simulate's).

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_ENV = "tiny"
TINY_DOSES = (1000.0, 100000.0)
TINY_SIMULATE = {
    "patch_size": 16,
    "object_shape": [56, 56],
    # The embedded study in miniature: an 8 px beam, 3.5 px scan steps.
    "probe": {"aperture": 0.5, "central_stop": 0.3, "beam_diameter": 0.8},
    "scan": {"rows": 12, "points_per_row": 12, "n_positions": 144},
    "chunk_size": 32,
    "min_view_positions": 5,
}


def base_parameters() -> dict:
    """conf/base's parameters, as a run without an environment reads them."""
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base"
    )
    return loader["parameters"]


def baseline_params(**overrides: object) -> dict:
    """conf/base's ``ptychi_baseline`` parameters with ``overrides`` deep-merged into
    them (where every default lives: the options class has none of its own)."""
    return merged(base_parameters()["ptychi_baseline"], overrides)


def merged(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` deep-merged, as Kedro merges an environment."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def run_kedro(
    project: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m kedro ARGS`` in ``project``, telemetry off, output captured.

    ``env`` adds to this process's environment. Never raises on a failed run: the
    caller asserts on the exit code and the output.
    """
    return subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        check=False,
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_tiny_project(
    root: Path,
    doses: tuple[float, ...],
    parameters: dict[str, dict] | None = None,
    *,
    env: str = TINY_ENV,
    design: dict | None = None,
) -> Path:
    """A temporary project: ``conf/`` and ``pyproject.toml`` copied, ``src/`` empty.

    The package is imported from where it is installed; Kedro only needs ``src/`` to
    exist inside the project. Its ``env`` environment (``--env tiny``; may be one of the
    project's own, such as ``dask``) overrides only what makes the study small: the
    doses and other ``design`` keys, ``TINY_SIMULATE`` (N = 16, 144 positions) and any
    ``parameters`` (``{"ptychi_baseline": {...}}``); the project's deep merge keeps the
    rest of ``conf/base``. ``conf/local`` starts empty.
    """
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    shutil.copytree(
        PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local")
    )
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    tiny = root / "conf" / env
    tiny.mkdir(exist_ok=True)
    study = {"doses": list(doses), **(design or {})}
    (tiny / "globals.yml").write_text(yaml.safe_dump({"study": study}))
    for name, values in {"simulate": TINY_SIMULATE, **(parameters or {})}.items():
        (tiny / f"parameters_{name}.yml").write_text(yaml.safe_dump({name: values}))
    return root


@pytest.fixture(scope="session")
def tiny_kedro_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with doses ``TINY_DOSES``."""
    return make_tiny_project(tmp_path_factory.mktemp("tiny_project"), TINY_DOSES)


RECONSTRUCTION = "ptychi_reconstruction.npz"


def assert_same_reconstructions(reference: Path, artifacts: Path) -> int:
    """Every array of every reconstruction bit for bit; returns how many files."""
    files = sorted(reference.rglob(RECONSTRUCTION))
    for path in files:
        with (
            np.load(path) as ours,
            np.load(artifacts / path.relative_to(reference)) as theirs,
        ):
            assert set(ours.files) == set(theirs.files), path
            for key in set(ours.files) - {"provenance"}:
                assert np.array_equal(ours[key], theirs[key]), (path, key)
    return len(files)
