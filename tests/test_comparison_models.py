"""A model's file on the truth's grid, the declared models, the shared footing, the dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, DatasetError
from test_evaluation_metrics import _object

from fly64_recon.datasets.model_source import (
    ModelSourceDataset,
    ObjectKeys,
    model_filepath,
)
from fly64_recon.pipelines.comparison.models import (
    ModelFileError,
    check_models,
    fill_nearest,
    model_on_grid,
)
from fly64_recon.science.scoring import (
    has_ground_truth,
    job_footing,
    photons_per_pattern,
)

PROJECT = Path(__file__).resolve().parents[1]
SHAPE = (96, 128)
MASK = np.zeros(SHAPE, dtype=bool)
MASK[20:70, 30:100] = True
PATH = "/data/pinn/dose_1000/dense/test.npz"


def test_declared_models_are_checked_by_name_and_pattern():
    good = {
        "pinn": "/d/dose_{dose}/{view}/{split}.npz",
        "other-1": "{model}/x.npz",
        "pinn2": {"path": "/p/{view}/recon.npz", "object_key": "ptychopinn_complex"},
    }

    assert check_models(good) == good
    assert check_models(None) == {} == check_models({})
    for models, words in [
        ({"pinn.v2": "x.npz"}, "comparison_models.pinn.v2: a model name"),
        ({"ptychi": "x.npz"}, "names the pty-chi baseline"),
        ({"pinn": ""}, "non-empty string"),
        ({"pinn": "/d/{dose_dir}/x.npz"}, "unknown placeholder(s) ['dose_dir']"),
        ({"pinn": "/d/{dose/x.npz"}, "is not a path pattern"),
        ({"pinn": {"object_key": "YY_pred"}}, "comparison_models.pinn: no path"),
        ({"pinn": {"path": "x.npz", "key": "YY_pred"}}, "unknown key(s) ['key']"),
        ({"pinn": {"path": "x.npz", "phase_key": 3}}, "pinn.phase_key must be a"),
        ({"pinn": ["x.npz"]}, "a path pattern, or a mapping of path, object_key"),
    ]:
        with pytest.raises(ValueError, match="comparison_models") as error:
            check_models(models)
        assert words in str(error.value)


def test_an_object_on_the_full_grid_is_used_as_it_is():
    truth = _object(SHAPE)

    image, scored = model_on_grid({"reconstructed_object": truth}, PATH, MASK)

    np.testing.assert_array_equal(image, truth)
    np.testing.assert_array_equal(scored, MASK)


def test_amplitude_and_phase_make_the_same_object():
    truth = _object(SHAPE)
    parts = {"amplitude": np.abs(truth), "phase": np.angle(truth).astype(np.float64)}

    image, _ = model_on_grid(parts, PATH, MASK)

    np.testing.assert_allclose(image, truth, atol=1e-6)


def test_a_crop_is_placed_at_its_offset_and_scored_where_it_covers_the_mask():
    truth = _object(SHAPE)
    arrays = {
        "reconstructed_object": truth[10:60, 40:128],
        "offset": np.array([10, 40]),
    }

    image, scored = model_on_grid(arrays, PATH, MASK)

    np.testing.assert_array_equal(image[10:60, 40:128], truth[10:60, 40:128])
    np.testing.assert_array_equal(scored, MASK & _box(10, 60, 40, 128))
    # outside the crop: its nearest edge pixel (the spline shift sees an edge)
    np.testing.assert_array_equal(image[0, 40], truth[10, 40])
    np.testing.assert_array_equal(image[70, 20], truth[59, 40])


def test_non_finite_values_off_the_lit_pixels_are_filled_from_their_neighbours():
    truth = _object(SHAPE).astype(np.complex128)
    truth[0:5, 0:5] = np.nan

    image, _ = model_on_grid({"reconstructed_object": truth}, PATH, MASK)

    assert np.isfinite(image).all()
    assert image[4, 0] == truth[5, 0] and image[0, 3] == truth[0, 5]


def test_fill_nearest_leaves_a_finite_image_alone():
    image = np.arange(6.0).reshape(2, 3)

    assert fill_nearest(image) is image


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    box = np.zeros(SHAPE, dtype=bool)
    box[y0:y1, x0:x1] = True
    return box


OBJECT = _object(SHAPE)


@pytest.mark.parametrize(
    ("arrays", "key", "words"),
    [
        ({"probe": OBJECT}, "'reconstructed_object'", "the file has ['probe']"),
        (
            {"reconstructed_object": np.abs(OBJECT)},
            "'reconstructed_object'",
            "dtype float32; it must be complex",
        ),
        (
            {"amplitude": np.ones(SHAPE, dtype=np.int32), "phase": np.zeros(SHAPE)},
            "'amplitude'",
            "dtype int32; it must be real floating point",
        ),
        (
            {"reconstructed_object": OBJECT[None]},
            "'reconstructed_object'",
            "shape (1, 96, 128); it must be a 2-D image",
        ),
        (
            {"amplitude": np.ones(SHAPE), "phase": np.zeros((96, 127))},
            "'phase'",
            "they must match",
        ),
        (
            {"reconstructed_object": np.ones((97, 128), dtype=np.complex64)},
            "'offset'",
            "a crop needs key",
        ),
        (
            {"reconstructed_object": OBJECT[:50, :50], "offset": np.array([50, 0])},
            "'offset'",
            "outside the 96 x 128 ground truth",
        ),
        (
            {"reconstructed_object": OBJECT[:50, :50], "offset": np.array([-1, 0])},
            "'offset'",
            "outside",
        ),
        (
            {"reconstructed_object": OBJECT[:50, :50], "offset": np.array([1.5, 0])},
            "'offset'",
            "two whole numbers",
        ),
        (
            {"reconstructed_object": OBJECT[:50, :50], "offset": np.array([1, 2, 3])},
            "'offset'",
            "two whole numbers",
        ),
        (
            {"reconstructed_object": OBJECT[:10, :10], "offset": np.array([0, 0])},
            "'offset'",
            "object on no lit pixel",
        ),
        (
            {"amplitude": np.where(MASK, np.nan, 1.0), "phase": np.zeros(SHAPE)},
            "'amplitude'",
            "3500 non-finite value(s) on lit pixels",
        ),
    ],
)
def test_a_file_that_breaks_the_rules_names_the_file_and_the_key(arrays, key, words):
    with pytest.raises(ModelFileError) as error:
        model_on_grid(arrays, PATH, MASK)

    message = str(error.value)
    assert message.startswith(f"{PATH}: ") and key in message and words in message


def test_whole_float_offsets_are_accepted():
    arrays = {
        "reconstructed_object": OBJECT[10:60, 20:110],
        "offset": np.array([10.0, 20.0]),
    }

    image, _ = model_on_grid(arrays, PATH, MASK)

    np.testing.assert_array_equal(image[10:60, 20:110], OBJECT[10:60, 20:110])


def _members(n: int = 6, **metadata) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "objectGuess": OBJECT,
        "probeGuess": np.ones((16, 16), dtype=np.complex64),
        "xcoords": np.linspace(40.0, 80.0, n),
        "ycoords": np.full(n, 48.0),
        "diffraction": rng.random((n, 16, 16)).astype(np.float32),
        "_metadata": np.array(json.dumps(metadata)),
    }


def test_photons_per_pattern_is_the_mean_total_count():
    patterns = np.random.default_rng(1).random((600, 8, 8)).astype(np.float32)
    direct = float(
        np.mean(np.sum((patterns.astype(np.float64) * 3.0) ** 2, axis=(1, 2)))
    )

    assert photons_per_pattern(patterns, 3.0) == pytest.approx(direct, rel=1e-12)
    assert photons_per_pattern(patterns[:0], 3.0) == 0.0


def test_the_footing_uses_the_patterns_the_job_used():
    members = _members(intensity_scale=2.0)

    every = job_footing(members, None, 0.1)
    first_two = job_footing(members, np.array([0, 1]), 0.1)

    expected = photons_per_pattern(members["diffraction"][:2], 2.0)
    assert first_two.photons_per_pattern == pytest.approx(expected)
    assert first_two.mask.sum() < every.mask.sum()
    assert every.mask[40:56, 32:88].all() and not every.mask[:30].any()
    assert 0 < every.noise_floor()["mae"] < np.inf
    assert every.noise_floor(first_two.mask)["mae"] > 0


def test_ground_truth_is_absent_when_flat_or_when_the_metadata_says_so():
    assert has_ground_truth(_members(), 1e-6)
    assert not has_ground_truth(_members(ground_truth=False), 1e-6)
    flat = {**_members(), "objectGuess": np.ones(SHAPE, dtype=np.complex64)}
    assert not has_ground_truth(flat, 1e-6)


def test_a_relative_pattern_starts_at_the_project_root():
    assert model_filepath("/project", "models/a.npz") == "/project/models/a.npz"
    assert model_filepath("/project", "/abs/a.npz") == "/abs/a.npz"
    assert model_filepath("/project", "s3://bucket/a.npz") == "s3://bucket/a.npz"


def test_an_undeclared_model_is_a_clear_dataset_error():
    with pytest.raises(DatasetError, match="'pinn' is not declared"):
        ModelSourceDataset(path=".", models={"other": "x.npz"}, model="pinn")


def test_the_catalog_fills_each_jobs_pattern(tmp_path):
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    for name in ("catalog_comparison.yml", "globals.yml"):
        (conf / "base" / name).write_text((PROJECT / "conf/base" / name).read_text())
    models = {
        "pinn": {
            "path": "/data/pinn/dose_{dose}/{view}/{split}.npz",
            "object_key": "ptychopinn_complex",
        },
        "mine": "out/{model}_{view}_{split}.npz",
    }
    (conf / "local").mkdir()
    (conf / "local" / "globals.yml").write_text(
        yaml.safe_dump({"comparison_models": models})
    )
    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(loader["catalog"])

    found = {
        name: catalog.load(name).path
        for name in (
            "comparison__pinn__dose_10000__dense__test",
            "comparison__pinn__dose_1000__sparse__train",
            "comparison__mine__dose_10000__baseline__test",
        )
    }

    assert found == {
        "comparison__pinn__dose_10000__dense__test": "/data/pinn/dose_10000/dense/test.npz",
        "comparison__pinn__dose_1000__sparse__train": "/data/pinn/dose_1000/sparse/train.npz",
        "comparison__mine__dose_10000__baseline__test": "out/mine_baseline_test.npz",
    }
    pinn = catalog.load("comparison__pinn__dose_10000__dense__test").keys
    assert pinn == ObjectKeys(object="ptychopinn_complex")
    assert catalog.load("comparison__mine__dose_10000__baseline__test").keys == (
        ObjectKeys()
    )


def test_the_dask_environment_persists_what_crosses_between_comparison_nodes(tmp_path):
    loader = OmegaConfigLoader(
        str(PROJECT / "conf"),
        base_env="base",
        default_run_env="dask",
        runtime_params={"artifact_root": str(tmp_path), "reporting_root": "rep"},
    )
    catalog = DataCatalog.from_config(loader["catalog"])

    images = catalog.get("dose_1e4.dense.test.comparison_images")
    collected = catalog.get("comparison_summary.all_comparisons")
    table = catalog.get("comparison_summary.metrics_table")
    assert type(images).__name__ == type(collected).__name__ == "PickleDataset"
    assert str(images._filepath).endswith("dose_1e4/dense/test/comparison_images.pkl")
    assert str(table._filepath) == "rep/comparison_metrics.csv"
    figure = catalog.get("dose_1e4.dense.test.comparison_plot")
    assert figure._describe()["filepath"].endswith(
        "dose_10000/dense/test/comparison.png"
    )
