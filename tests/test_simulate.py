"""The simulate pipeline: physics, splits, views, determinism and the DATA-001 contract."""

from __future__ import annotations

import copy
from itertools import combinations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from fly64_recon.contract import read_metadata, validate
from fly64_recon.pipelines.simulate import create_pipeline, nodes, physics
from fly64_recon.science import views
from fly64_recon.study import Job, StudyDesign, StudyDesignError, spacing_threshold

DOSES = (1000.0, 100000.0)
VIEWS = {"dense": 0.7, "sparse": 0.2}


def small_params(**scan) -> dict:
    """``params:simulate`` at N = 16 with 400 positions: fast, yet enough statistics."""
    return {
        "seed": 7,
        "patch_size": 16,
        "object_shape": [96, 104],
        "probe": {"aperture": 0.5, "central_stop": 0.3, "beam_diameter": 0.5},
        "object": {
            "spokes": 12,
            "star_radius": 0.6,
            "blob_count": 12,
            "blob_sigma": [1.5, 12.0],
            "texture_sigma": 1.5,
            "weights": {"star": 0.5, "blobs": 0.35, "texture": 0.15},
            "min_amplitude": 0.5,
            "max_phase": 1.4,
        },
        "scan": {
            "pattern": "fly",
            "rows": 20,
            "points_per_row": 20,
            "n_positions": 400,
            "jitter": 0.5,
            "margin": 1,
            **scan,
        },
        "chunk_size": 64,
        "min_view_positions": 5,
        "write_ground_truth_patches": False,
        "illumination_fraction": 0.1,
    }


@pytest.fixture(scope="module")
def params() -> dict:
    return small_params()


@pytest.fixture(scope="module")
def truth(params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probe, object and scan."""
    return nodes.make_probe(params), nodes.make_object(params), nodes.make_scan(params)


@pytest.fixture(scope="module")
def phase_c(params, truth) -> dict[float, dict[str, dict[str, np.ndarray]]]:
    """Phase C files by dose and split."""
    return {
        dose: nodes.simulate_dose(*truth, params, dose=dose, splits=("train", "test"))
        for dose in DOSES
    }


@pytest.fixture(scope="module")
def phase_d(params, phase_c) -> dict[tuple[float, str, str], dict[str, np.ndarray]]:
    """Phase D files by (dose, view, split)."""
    return {
        (dose, view, split): views.select_view(
            phase_c[dose][split], params, view=view, overlap=overlap
        )
        for dose in DOSES
        for view, overlap in VIEWS.items()
        for split in ("train", "test")
    }


def counts_of(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return physics.photon_counts(
        arrays["diffraction"], read_metadata(arrays)["intensity_scale"]
    )


# Probe, object, scan


@pytest.mark.parametrize("size", [16, 64])
def test_probe_is_a_focused_complex_probe(params, size):
    probe = nodes.make_probe({**params, "patch_size": size})
    assert probe.dtype == np.complex64 and probe.shape == (size, size)
    intensity = np.abs(probe) ** 2
    yy, xx = np.indices(probe.shape)
    centroid = [(c * intensity).sum() / intensity.sum() for c in (yy, xx)]
    np.testing.assert_allclose(centroid, size / 2, atol=0.5)
    # Its far field is the pupil: peak 1, nothing beyond the aperture, curved phase.
    pupil = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe), norm="ortho"))
    radius = np.hypot(yy - size // 2, xx - size // 2)
    aperture = params["probe"]["aperture"] * size / 2
    assert np.abs(pupil).max() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(pupil[radius > aperture + 1]).max() < 1e-5
    assert np.ptp(np.angle(pupil[np.abs(pupil) > 0.99])) > 1.0


def test_object_amplitude_and_phase_ranges(params, truth):
    obj = truth[1]
    assert obj.dtype == np.complex64 and obj.shape == tuple(params["object_shape"])
    amplitude, phase = np.abs(obj), np.angle(obj)
    assert amplitude.min() >= params["object"]["min_amplitude"] - 1e-6
    assert amplitude.max() <= 1 + 1e-6
    assert np.abs(phase).max() <= min(params["object"]["max_phase"], np.pi / 2) + 1e-6
    assert np.ptp(amplitude) > 0.3 and np.ptp(phase) > 2.0


def test_object_depends_on_the_seed_only(params):
    again = nodes.make_object(copy.deepcopy(params))
    other = nodes.make_object({**params, "seed": params["seed"] + 1})
    assert np.array_equal(nodes.make_object(params), again)
    assert not np.array_equal(again, other)


@pytest.mark.parametrize("pattern", ["fly", "random"])
def test_every_footprint_lies_inside_the_object(pattern):
    params = small_params(pattern=pattern, jitter=3.0)
    scan = nodes.make_scan(params)
    half = params["patch_size"] / 2 + 1  # + the sub-pixel shift's pad
    height, width = params["object_shape"]
    assert scan.shape == (400, 2) and scan.dtype == np.float64
    assert scan[:, 0].min() >= half and scan[:, 0].max() <= height - half
    assert scan[:, 1].min() >= half and scan[:, 1].max() <= width - half


def test_fly_scan_rows_snake_and_random_scan_differs():
    fly = nodes.make_scan(small_params(jitter=0.0))
    rows = fly.reshape(20, 20, 2)
    assert np.all(np.diff(rows[0, :, 1]) > 0) and np.all(np.diff(rows[1, :, 1]) < 0)
    assert np.all(np.ptp(rows[:, :, 0], axis=1) == 0)
    uniform = nodes.make_scan(small_params(pattern="random"))
    assert not np.allclose(np.sort(uniform[:, 1]), np.sort(fly[:, 1]))


def test_unknown_scan_pattern_is_refused():
    with pytest.raises(ValueError, match="scan.pattern"):
        nodes.make_scan(small_params(pattern="spiral"))


def test_patch_extraction_matches_ptychi():
    pytest.importorskip("ptychi")
    import torch
    from ptychi.image_proc import extract_patches_fourier_shift

    rng = np.random.default_rng(3)
    image = (rng.standard_normal((70, 80)) + 1j * rng.standard_normal((70, 80))).astype(
        np.complex64
    )
    size = 16
    low, high = physics.scan_bounds(image.shape, size, margin=1)
    positions = rng.uniform(low, high, (50, 2))
    ours = physics.extract_patches(image, positions, size)
    theirs = extract_patches_fourier_shift(
        torch.from_numpy(image),
        torch.from_numpy(positions - 0.5),
        (size, size),
    ).numpy()
    assert ours.dtype == np.complex64
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_integer_positions_give_plain_slices(truth):
    obj = truth[1]
    patches = physics.extract_patches(obj, np.array([[20.0, 30.0]]), 16)
    np.testing.assert_allclose(patches[0], obj[12:28, 22:38], atol=1e-5)


# Diffraction


@pytest.mark.parametrize("dose", DOSES)
def test_mean_total_counts_match_the_dose(phase_c, dose):
    totals = np.concatenate(
        [counts_of(phase_c[dose][s]).sum(axis=(1, 2)) for s in ("train", "test")]
    )
    # The grand total is Poisson(n * dose): its mean has standard deviation sqrt(dose/n).
    assert abs(totals.mean() - dose) < 5 * np.sqrt(dose / len(totals))


def test_poisson_counts_are_recovered_exactly(params, truth, phase_c):
    probe, obj, scan = truth
    arrays = phase_c[1000.0]["test"]
    scale = read_metadata(arrays)["intensity_scale"]
    index = arrays["scan_index"]
    rates = physics.far_field(
        probe, physics.extract_patches(obj, scan[index], 16), 1
    ).astype(np.float64)
    keys = physics.noise_keys(params["seed"], 1000.0, index)
    drawn = np.stack(
        [
            np.random.default_rng(key).poisson(rate * scale**2)
            for key, rate in zip(keys, rates, strict=True)
        ]
    )
    stored = (arrays["diffraction"].astype(np.float64) * scale) ** 2
    assert arrays["diffraction"].dtype == np.float32
    assert np.abs(stored - np.rint(stored)).max() < 1e-3
    assert np.array_equal(counts_of(arrays), drawn)


def test_diffraction_is_dc_centred(phase_c):
    mean = phase_c[100000.0]["train"]["diffraction"].mean(axis=0)
    peak = np.unravel_index(np.argmax(mean), mean.shape)
    assert np.hypot(peak[0] - 8, peak[1] - 8) <= 4


def test_doses_draw_different_noise(phase_c):
    low, high = (phase_c[d]["train"]["diffraction"] for d in DOSES)
    assert low.shape == high.shape and not np.allclose(low, high)


# Splits and views


def test_split_by_y_at_the_midpoint(truth, phase_c):
    scan = truth[2]
    middle = (scan[:, 0].min() + scan[:, 0].max()) / 2
    train, test = phase_c[1000.0]["train"], phase_c[1000.0]["test"]
    assert np.all(train["ycoords"] < middle) and np.all(test["ycoords"] >= middle)
    index = np.concatenate([train["scan_index"], test["scan_index"]])
    assert np.array_equal(np.sort(index), np.arange(len(scan)))
    for arrays in (train, test):
        i = arrays["scan_index"]
        assert np.array_equal(arrays["ycoords"], scan[i, 0])
        assert np.array_equal(arrays["xcoords"], scan[i, 1])
        assert read_metadata(arrays)["n_positions"] == len(i)


def test_every_view_keeps_its_spacing(phase_d):
    for (_, view, _), arrays in phase_d.items():
        positions = np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1)
        threshold = spacing_threshold(VIEWS[view], 16)
        assert len(positions) >= 5
        assert pdist(positions).min() >= threshold


def test_views_subset_phase_c_consistently(phase_c, phase_d):
    for (dose, view, split), arrays in phase_d.items():
        source = phase_c[dose][split]
        rows = np.searchsorted(source["scan_index"], arrays["scan_index"])
        assert np.array_equal(source["scan_index"][rows], arrays["scan_index"])
        for key in ("diffraction", "xcoords", "ycoords"):
            assert np.array_equal(arrays[key], source[key][rows])
        for key in ("probeGuess", "objectGuess"):
            assert np.array_equal(arrays[key], source[key])
        meta = read_metadata(arrays)
        n = len(source["xcoords"])
        assert meta["n_accepted"] == len(rows) == meta["n_positions"]
        assert meta["n_accepted"] + meta["n_rejected"] == n
        assert meta["acceptance_rate"] == pytest.approx(len(rows) / n)
        assert meta["overlap_view"] == view
        assert meta["overlap_fraction"] == VIEWS[view]
        assert meta["spacing_threshold"] == spacing_threshold(VIEWS[view], 16)
        assert meta["source_file"] == f"patched_{split}.npz"
        assert meta["selection_strategy"] == "greedy"  # the scan is too dense for NN
        assert meta["dose"] == dose and meta["split"] == split


def test_every_view_records_its_measured_overlap_and_photons(phase_c, phase_d):
    for (dose, _view, split), arrays in phase_d.items():
        meta = read_metadata(arrays)
        whole = read_metadata(phase_c[dose][split])
        assert 0 <= meta["measured_overlap"] < whole["measured_overlap"] < 1
        assert meta["probe_diameter_px"] == whole["probe_diameter_px"] > 0
        assert meta["photons_per_px2"] < whole["photons_per_px2"]  # fewer patterns
        assert meta["lit_area_px"] > 0 and meta["illumination_fraction"] == 0.1


def test_nearest_neighbour_rule_keeps_well_spaced_points():
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 2)
    keep, strategy = views.select_spaced(grid * 20 + 10, 19.2, 10)
    assert strategy == "nearest_neighbour" and len(keep) == 20


def test_nearest_neighbour_rule_drops_close_pairs():
    points = np.array([[0.0, 0.0], [0.0, 5.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50]])
    assert views.nearest_neighbour_mask(points, 10.0).tolist() == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_greedy_fallback_triggers_and_respects_spacing():
    points = np.random.default_rng(0).uniform(0, 200, (600, 2))
    keep, strategy = views.select_spaced(points, 25.0, 20)
    assert strategy == "greedy" and len(keep) >= 20
    assert pdist(points[keep]).min() >= 25.0
    assert np.array_equal(keep, np.sort(keep))


def brute_force_greedy(points: np.ndarray, threshold: float) -> list[int]:
    accepted: list[int] = []
    for i in np.lexsort((points[:, 1], points[:, 0])):
        if all(np.hypot(*(points[i] - points[j])) >= threshold for j in accepted):
            accepted.append(int(i))
    return sorted(accepted)


@pytest.mark.parametrize("threshold", [4.8, 12.8, 30.0])
def test_greedy_matches_the_rule_by_brute_force(threshold):
    points = np.random.default_rng(1).uniform(0, 100, (300, 2))
    # A point exactly at the threshold is far enough.
    points = np.vstack([points, points[:1] + [0.0, threshold]])
    keep = views.greedy_selection(points, threshold)
    assert keep.tolist() == brute_force_greedy(points, threshold)


# Files


def test_phase_c_file_content(params, phase_c):
    arrays = phase_c[1000.0]["train"]
    n = len(arrays["xcoords"])
    assert set(arrays) == {
        "diffraction",
        "probeGuess",
        "objectGuess",
        "xcoords",
        "ycoords",
        "scan_index",
        "_metadata",
    }
    assert arrays["diffraction"].shape == (n, 16, 16)
    assert arrays["xcoords"].dtype == arrays["ycoords"].dtype == np.float64
    assert arrays["scan_index"].dtype == np.int64
    assert arrays["_metadata"].shape == () and arrays["_metadata"].dtype.kind == "U"
    meta = read_metadata(arrays)
    assert meta["source"] == "fly64_recon.simulate"
    assert meta["dose"] == 1000.0 and meta["seed"] == params["seed"]
    assert meta["scan_pattern"] == "fly" and meta["split"] == "train"
    assert meta["patch_size"] == 16 and meta["object_shape"] == [96, 104]
    assert meta["n_positions"] == n and meta["n_scan_positions"] == 400
    assert meta["intensity_scale"] > 0


def test_ground_truth_patches_on_request(params, truth):
    with_y = {**params, "write_ground_truth_patches": True}
    files = nodes.simulate_dose(*truth, with_y, dose=1000.0, splits=("test",))
    arrays = files["test"]
    assert set(files) == {"test"}
    assert arrays["Y"].dtype == np.complex64
    assert arrays["Y"].shape == arrays["diffraction"].shape
    expected = physics.extract_patches(
        truth[1], np.stack([arrays["ycoords"], arrays["xcoords"]], 1), 16
    )
    assert np.array_equal(arrays["Y"], expected)
    view = views.select_view(arrays, with_y, view="sparse", overlap=0.2)
    rows = np.searchsorted(arrays["scan_index"], view["scan_index"])
    assert np.array_equal(view["Y"], arrays["Y"][rows])


def test_a_position_error_is_recorded_and_the_truth_kept(params, truth, phase_c):
    shaken = {**params, "scan": {**params["scan"], "position_error": 1.5}}
    files = nodes.simulate_dose(*truth, shaken, dose=1000.0, splits=("train", "test"))
    view = views.select_view(files["test"], shaken, view="sparse", overlap=0.2)
    scan = truth[2]

    errors = []
    for split, arrays in files.items():
        exact = phase_c[1000.0][split]
        i = arrays["scan_index"]
        assert np.array_equal(arrays["xcoords_true"], scan[i, 1])
        assert np.array_equal(arrays["ycoords_true"], scan[i, 0])
        assert np.array_equal(arrays["diffraction"], exact["diffraction"])  # true
        errors += [arrays["xcoords"] - scan[i, 1], arrays["ycoords"] - scan[i, 0]]
        assert read_metadata(arrays)["position_error_px"] == 1.5
        assert validate(arrays, split) == []
    assert np.std(np.concatenate(errors)) == pytest.approx(1.5, rel=0.15)
    rows = np.searchsorted(files["test"]["scan_index"], view["scan_index"])
    for key in ("xcoords", "xcoords_true", "ycoords_true"):
        assert np.array_equal(view[key], files["test"][key][rows])
    assert "xcoords_true" not in phase_c[1000.0]["train"]  # no error, no extra key
    again = nodes.simulate_dose(*truth, shaken, dose=100000.0, splits=("train",))
    assert np.array_equal(again["train"]["xcoords"], files["train"]["xcoords"])
    with pytest.raises(ValueError, match="position_error must be >= 0"):
        nodes.position_error({"scan": {"position_error": -1.0}})


def test_same_seed_same_bytes(params, truth, phase_c):
    again = nodes.simulate_dose(
        nodes.make_probe(params),
        nodes.make_object(params),
        nodes.make_scan(params),
        copy.deepcopy(params),
        dose=1000.0,
        splits=("train", "test"),
    )
    for split, arrays in again.items():
        reference = phase_c[1000.0][split]
        assert set(arrays) == set(reference)
        for key, value in arrays.items():
            assert value.dtype == reference[key].dtype
            assert value.tobytes() == reference[key].tobytes(), key


def test_chunking_and_threads_do_not_change_the_noise(params, truth, phase_c):
    other = {**params, "chunk_size": 7}
    files = nodes.simulate_dose(*truth, other, dose=1000.0, splits=("train",))
    assert np.array_equal(
        files["train"]["diffraction"], phase_c[1000.0]["train"]["diffraction"]
    )
    probe, obj, scan = truth
    keys = physics.noise_keys(7, 1000.0, np.arange(len(scan)))
    one, _ = physics.simulate_amplitudes(probe, obj, scan, 1000.0, keys, 50, workers=1)
    two, _ = physics.simulate_amplitudes(probe, obj, scan, 1000.0, keys, 13, workers=2)
    assert np.array_equal(one, two)


def test_every_file_passes_the_contract(phase_c, phase_d):
    contract = pytest.importorskip("fly64_recon.contract")
    files = {
        Job(dose, "baseline", split).input_relpath: phase_c[dose][split]
        for dose in DOSES
        for split in ("train", "test")
    }
    files |= {Job(*key).input_relpath: arrays for key, arrays in phase_d.items()}
    assert len(files) == 12
    for path, arrays in files.items():
        assert contract.validate(arrays, path) == [], path


# Pipeline


def test_pipeline_writes_every_study_file_from_shared_ground_truth():
    overlap = {"dense": 0.7, "sparse": 0.2}
    design = StudyDesign(doses=(1000.0, 10000.0), overlap=overlap)
    pipeline = create_pipeline(design=design)
    by_name = {node.name: node for node in pipeline.nodes}
    assert set(by_name) >= {
        "simulate.make_probe",
        "simulate.make_object",
        "simulate.make_scan",
        "simulate.dose_1e3.simulate_dose",
        "simulate.dose_1e4.select_sparse_test",
    }
    assert len(by_name) == 3 + 2 * 5
    expected = {f"{job.input_dataset}@arrays" for job in design.jobs()}
    assert pipeline.all_outputs() == expected | {
        "simulate.probe",
        "simulate.object",
        "simulate.scan",
    }
    assert pipeline.inputs() == {"params:simulate"}

    simulate = by_name["simulate.dose_1e4.simulate_dose"]
    assert simulate.inputs == [
        "simulate.probe",
        "simulate.object",
        "simulate.scan",
        "params:simulate",
    ]
    view = by_name["simulate.dose_1e4.select_dense_train"]
    assert view.inputs[0] == f"{Job(10000.0, 'baseline', 'train').input_dataset}@arrays"


def test_a_phase_d_view_without_its_overlap_fraction_is_named():
    with pytest.raises(
        StudyDesignError, match="study.overlap has no fraction for 'dense'"
    ):
        create_pipeline(design=StudyDesign(doses=(1000.0,), overlap={"sparse": 0.2}))


def test_seeds_differ_between_all_doses():
    keys = [tuple(physics.noise_keys(42, d, np.array([0]))[0]) for d in (1e3, 1e4, 1e5)]
    assert all(a != b for a, b in combinations(keys, 2))
