"""DATA-001 validation: one test per malformed case, plus properties of valid files."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fly64_recon.contract import (
    REQUIRED_KEYS,
    ContractError,
    Problem,
    read_metadata,
    validate,
)

PATH = "data/phase_c/dose_1000/patched_train.npz"
N = 8
SCALE = 0.05


def make_file(
    rng: np.random.Generator,
    *,
    n: int = 4,
    size: int = N,
    height: int = 32,
    width: int = 32,
    metadata: bool = True,
) -> dict[str, np.ndarray]:
    """A valid DATA-001 file: Poisson counts, amplitude = sqrt(counts) / scale."""
    r2 = (np.arange(size) - size / 2) ** 2
    profile = np.exp(-np.add.outer(r2, r2) / 2)
    counts = rng.poisson(300 * profile, size=(n, size, size))
    arrays = {
        "diffraction": (np.sqrt(counts) / SCALE).astype(np.float32),
        "probeGuess": np.ones((size, size), np.complex64),
        "objectGuess": np.ones((height, width), np.complex64),
        "xcoords": rng.uniform(size / 2, width - size / 2, n),
        "ycoords": rng.uniform(size / 2, height - size / 2, n),
    }
    if metadata:
        dose = float(counts.sum(axis=(1, 2)).mean())
        arrays["_metadata"] = np.array(
            json.dumps({"dose": dose, "intensity_scale": SCALE, "seed": 42})
        )
    return arrays


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return make_file(np.random.default_rng(0))


def problems_of(arrays: dict[str, np.ndarray]) -> ContractError:
    with pytest.raises(ContractError) as excinfo:
        validate(arrays, PATH)
    return excinfo.value


def assert_problem(error: ContractError, key: str, *fragments: str) -> None:
    """The error names the file, and one problem names the key and every fragment."""
    assert error.path == PATH
    assert str(error).startswith(PATH)
    matching = [
        p
        for p in error.problems
        if p.key == key and all(f in p.message for f in fragments)
    ]
    assert matching, f"no {key} problem with {fragments} in:\n{error}"
    assert f"  - {key}: {matching[0].message}" in str(error)


def test_valid_file_passes_without_warnings(arrays, caplog):
    with caplog.at_level(logging.WARNING):
        assert validate(arrays, PATH) == []
    assert not caplog.records


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key(arrays, key):
    del arrays[key]
    assert_problem(problems_of(arrays), key, "missing")


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.bool_])
def test_integer_or_bool_diffraction(arrays, dtype):
    arrays["diffraction"] = arrays["diffraction"].astype(dtype)
    assert_problem(problems_of(arrays), "diffraction", str(np.dtype(dtype)), "floating")


def test_complex_diffraction(arrays):
    arrays["diffraction"] = arrays["diffraction"].astype(np.complex64)
    assert_problem(problems_of(arrays), "diffraction", "complex64", "floating")


def test_float64_diffraction_is_tolerated(arrays):
    arrays["diffraction"] = arrays["diffraction"].astype(np.float64)
    assert validate(arrays, PATH) == []


def test_nan_and_inf_in_diffraction_are_counted(arrays):
    arrays["diffraction"][0, 0, :3] = np.nan
    arrays["diffraction"][2, 1, 1] = np.inf
    assert_problem(
        problems_of(arrays), "diffraction", "4 of 256", "3 NaN", "1 Inf", "not finite"
    )


@pytest.mark.parametrize("key", ["xcoords", "ycoords"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates(arrays, key, bad):
    arrays[key][1] = bad
    assert_problem(problems_of(arrays), key, "1 of 4", "not finite")


def test_negative_amplitudes_are_counted(arrays):
    arrays["diffraction"][1, :2, 0] = -0.5
    assert_problem(problems_of(arrays), "diffraction", "2 of 256", "negative", "-0.5")


def test_intensity_saved_as_amplitude_is_caught_with_metadata(arrays):
    arrays["diffraction"] = arrays["diffraction"] ** 2
    error = problems_of(arrays)
    assert_problem(error, "diffraction", "intensity saved as amplitude", "the dose is")
    assert len(error.problems) == 1


def test_counts_within_poisson_noise_pass(arrays):
    metadata = read_metadata(arrays)
    metadata["dose"] *= 1.5  # a subset of a scan may sit well off the scan's mean
    arrays["_metadata"] = np.array(json.dumps(metadata))
    assert validate(arrays, PATH) == []


@pytest.mark.parametrize("value", ["1e3", 0, -1.0, None, True])
def test_unusable_intensity_scale(arrays, value):
    metadata = read_metadata(arrays)
    metadata["intensity_scale"] = value
    arrays["_metadata"] = np.array(json.dumps(metadata))
    assert_problem(problems_of(arrays), "_metadata", "intensity_scale", "positive")


def test_zero_patterns(arrays):
    arrays["diffraction"] = np.zeros((0, N, N), np.float32)
    arrays["xcoords"] = arrays["ycoords"] = np.zeros(0)
    assert_problem(problems_of(arrays), "diffraction", "no patterns", "n >= 1")


def test_two_dimensional_diffraction(arrays):
    arrays["diffraction"] = arrays["diffraction"][0]
    error = problems_of(arrays)
    assert_problem(error, "diffraction", "(8, 8)", "not 3-D")


def test_non_square_patterns(arrays):
    arrays["diffraction"] = arrays["diffraction"][:, :, :6]
    assert_problem(problems_of(arrays), "diffraction", "8 x 6", "not square")


@pytest.mark.parametrize("key", ["xcoords", "ycoords"])
def test_coordinate_length_mismatch(arrays, key):
    arrays[key] = arrays[key][:3]
    assert_problem(problems_of(arrays), key, "length 3", "4 diffraction patterns")


def test_two_dimensional_coordinates(arrays):
    arrays["xcoords"] = arrays["xcoords"][:, None]
    assert_problem(problems_of(arrays), "xcoords", "(4, 1)", "not 1-D")


def test_complex_coordinates(arrays):
    arrays["ycoords"] = arrays["ycoords"].astype(np.complex128)
    assert_problem(problems_of(arrays), "ycoords", "complex128", "real numeric")


def test_probe_shape_differs_from_pattern_shape(arrays):
    arrays["probeGuess"] = np.ones((N + 2, N + 2), np.complex64)
    assert_problem(problems_of(arrays), "probeGuess", "(10, 10)", "(8, 8)")


def test_real_or_one_dimensional_probe(arrays):
    arrays["probeGuess"] = np.ones(N, np.float32)
    error = problems_of(arrays)
    assert_problem(error, "probeGuess", "float32", "not complex")
    assert_problem(error, "probeGuess", "not 2-D")


def test_non_finite_probe_or_object(arrays):
    arrays["probeGuess"][0, 0] = np.nan
    arrays["objectGuess"][3, 3] = complex(0, np.inf)
    error = problems_of(arrays)
    assert_problem(error, "probeGuess", "1 of 64", "not finite")
    assert_problem(error, "objectGuess", "1 of 1024", "not finite")


def test_object_smaller_than_probe(arrays):
    arrays["objectGuess"] = np.ones((N - 1, 32), np.complex64)
    assert_problem(
        problems_of(arrays), "objectGuess", "(7, 32)", "smaller than the 8 x 8"
    )


def test_object_not_complex_or_not_2d(arrays):
    arrays["objectGuess"] = np.ones((1, 32, 32), np.float64)
    error = problems_of(arrays)
    assert_problem(error, "objectGuess", "float64", "not complex")
    assert_problem(error, "objectGuess", "not 2-D")


def test_positions_outside_the_object(arrays):
    arrays["xcoords"][:] = [4.0, 29.5, 10.0, 12.0]  # 29.5 + 4 overshoots W = 32
    arrays["ycoords"][:] = [4.0, 10.0, 2.0, 12.0]  # 2 - 4 overshoots 0 by more
    assert_problem(
        problems_of(arrays),
        "objectGuess",
        "2 of 4 probe footprints",
        "32 x 32 object",
        "position 2 at (x=10, y=2) by 2 px",
    )


def test_footprints_touching_the_edges_are_inside(arrays):
    arrays["xcoords"][:] = [4.0, 28.0, 28.0 + 5e-7, 4.0 - 5e-7]
    arrays["ycoords"][:] = [4.0, 28.0, 4.0, 28.0]
    assert validate(arrays, PATH) == []


def test_metadata_not_valid_json(arrays):
    arrays["_metadata"] = np.array("{dose: 1000")
    assert_problem(problems_of(arrays), "_metadata", "not valid JSON")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (np.array("[1, 2]"), "JSON object"),
        (np.array(["{}", "{}"]), "one JSON string"),
        (np.array([1.0]), "one JSON string"),
    ],
)
def test_metadata_of_the_wrong_form(arrays, raw, fragment):
    arrays["_metadata"] = raw
    assert_problem(problems_of(arrays), "_metadata", fragment)


def test_read_metadata():
    assert read_metadata({}) == {}
    assert read_metadata({"_metadata": np.array([b'{"dose": 1e3}'])}) == {"dose": 1e3}
    with pytest.raises(ValueError, match="not valid JSON"):
        read_metadata({"_metadata": np.array("nope")})


def test_optional_keys_are_checked(arrays):
    arrays["Y"] = np.ones((4, N, N + 1), np.complex64)
    arrays["scan_index"] = np.arange(4, dtype=np.float64)
    arrays["xcoords_start"] = arrays["xcoords"][:2]
    arrays["ycoords_start"] = np.full(4, np.nan)
    arrays["bad_pixels"] = np.zeros((N, N - 1), np.uint8)
    error = problems_of(arrays)
    assert_problem(error, "Y", "(4, 8, 9)", "(4, 8, 8)")
    assert_problem(error, "scan_index", "float64", "not integer")
    assert_problem(error, "xcoords_start", "length 2")
    assert_problem(error, "ycoords_start", "not finite")
    assert_problem(error, "bad_pixels", "uint8 is not bool")
    assert_problem(error, "bad_pixels", "(8, 7) is not the patterns' (8, 8)")


def test_valid_optional_keys_pass(arrays):
    arrays["Y"] = np.ones((4, N, N), np.complex64)
    arrays["scan_index"] = np.arange(4)
    arrays["xcoords_start"] = arrays["xcoords"].copy()
    arrays["ycoords_start"] = arrays["ycoords"].copy()
    arrays["xcoords_true"] = arrays["xcoords"] + 0.5
    arrays["ycoords_true"] = arrays["ycoords"] - 0.5
    arrays["filenames"] = np.array(["a", "b", "c", "d"])
    arrays["bad_pixels"] = np.zeros((N, N), bool)
    assert validate(arrays, PATH) == []


def test_true_positions_are_checked_and_come_in_pairs(arrays):
    arrays["xcoords_true"] = np.array([1.0, np.inf, 2.0, 3.0])
    assert_problem(problems_of(arrays), "xcoords_true", "not finite")
    arrays["xcoords_true"] = arrays["xcoords"].copy()
    assert_problem(problems_of(arrays), "xcoords_true", "ycoords_true is missing")
    arrays["ycoords_true"] = arrays["ycoords"][:3]
    assert_problem(problems_of(arrays), "ycoords_true", "length 3")


def test_every_problem_is_listed_at_once(arrays):
    del arrays["probeGuess"]
    arrays["diffraction"][0, 0, 0] = np.nan
    arrays["diffraction"][0, 0, 1] = -1.0
    arrays["xcoords"] = arrays["xcoords"][:2]
    arrays["objectGuess"] = arrays["objectGuess"].real
    arrays["_metadata"] = np.array("{")
    error = problems_of(arrays)
    keys = [p.key for p in error.problems]
    assert sorted(keys) == sorted(
        [
            "probeGuess",
            "diffraction",
            "diffraction",
            "xcoords",
            "objectGuess",
            "_metadata",
        ]
    )
    assert len(str(error).splitlines()) == 1 + len(keys)


def test_broken_keys_skip_dependent_checks_without_crashing():
    arrays = {
        "diffraction": np.ones((2, 3, 4, 5), np.float32),
        "probeGuess": np.ones((), np.complex64),
        "objectGuess": np.ones(7, np.complex64),
        "xcoords": np.ones((2, 2)),
        "ycoords": np.array(["a", "b"]),
        "_metadata": np.array(json.dumps({"dose": 1e3, "intensity_scale": 2.0})),
    }
    error = problems_of(arrays)
    assert {p.key for p in error.problems} == set(REQUIRED_KEYS)


def test_contract_error_is_a_value_error_and_pickles(arrays):
    del arrays["xcoords"]
    error = problems_of(arrays)
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert clone.path == error.path
    assert (
        clone.problems
        == error.problems
        == [Problem("xcoords", "required key is missing")]
    )
    assert str(clone) == str(error)


def test_diffraction_with_its_dc_term_in_the_corner(arrays):
    arrays["diffraction"] = np.fft.ifftshift(arrays["diffraction"], axes=(-2, -1))
    assert_problem(problems_of(arrays), "diffraction", "DC term is in the corner")


def test_centred_diffraction_with_a_beamstop_passes(arrays):
    arrays["diffraction"][:, N // 2, N // 2] = 0  # the brightest pixel blocked
    assert validate(arrays, PATH) == []


@pytest.mark.parametrize(
    ("factor", "fragment"), [(0.0, "all zero"), (1e-9, "near zero")]
)
def test_an_all_zero_or_near_zero_probe(arrays, factor, fragment):
    arrays["probeGuess"] = arrays["probeGuess"] * np.complex64(factor)
    assert_problem(problems_of(arrays), "probeGuess", fragment)


def test_a_dim_but_real_probe_passes(arrays):
    arrays["probeGuess"] = arrays["probeGuess"] * np.complex64(1e-3)
    assert validate(arrays, PATH) == []


def test_many_exactly_repeated_positions(arrays):
    rng = np.random.default_rng(1)
    arrays = make_file(rng, n=20)
    for key in ("xcoords", "ycoords"):
        arrays[key][10:] = arrays[key][:10]
    assert_problem(problems_of(arrays), "xcoords", "10 of 20 positions repeat")


def test_one_repeated_position_is_a_warning(caplog):
    arrays = make_file(np.random.default_rng(2), n=20)
    for key in ("xcoords", "ycoords"):
        arrays[key][5] = arrays[key][4]
    with caplog.at_level(logging.WARNING, logger="fly64_recon.contract"):
        warnings = validate(arrays, PATH)
    assert warnings == [
        "xcoords/ycoords: 1 of 20 positions repeat an earlier (xcoords, ycoords) "
        "exactly"
    ]


def measured_style_file(rng: np.random.Generator, n: int = 6) -> dict[str, np.ndarray]:
    """Real measured data: amplitude = sqrt(counts), tens at the centre, no metadata."""
    arrays = make_file(rng, n=n, metadata=False)
    r2 = (np.arange(N) - N / 2) ** 2
    centre = np.exp(-np.add.outer(r2, r2) / 3)
    counts = rng.poisson(2500 * centre + 0.5, size=(n, N, N))
    arrays["diffraction"] = np.sqrt(counts).astype(np.float32)
    arrays["objectGuess"] = np.ones((32, 32), np.complex64)
    return arrays


def test_real_measured_data_pass(caplog):
    arrays = measured_style_file(np.random.default_rng(3))
    assert arrays["diffraction"].max() > 40
    with caplog.at_level(logging.WARNING):
        assert validate(arrays, PATH) == []


def test_counts_without_metadata_get_a_logged_warning(caplog):
    arrays = measured_style_file(np.random.default_rng(4))
    arrays["diffraction"] = arrays["diffraction"].astype(np.float64) ** 2
    with caplog.at_level(logging.WARNING, logger="fly64_recon.contract"):
        warnings = validate(arrays, PATH)
    assert len(warnings) == 1
    assert "intensity" in warnings[0]
    assert PATH in caplog.text
    assert warnings[0] in caplog.text


def test_scaled_intensity_without_metadata_gets_a_warning():
    arrays = measured_style_file(np.random.default_rng(5))
    arrays["diffraction"] = (arrays["diffraction"] ** 2 * 0.37).astype(np.float32)
    assert len(validate(arrays, PATH)) == 1


@st.composite
def valid_files(draw: st.DrawFn) -> dict[str, np.ndarray]:
    size = draw(st.integers(1, 12))
    return make_file(
        np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        n=draw(st.integers(1, 6)),
        size=size,
        height=draw(st.integers(size + 2, size + 20)),
        width=draw(st.integers(size + 2, size + 20)),
        metadata=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None)
@given(valid_files())
def test_valid_files_are_accepted(arrays):
    assert validate(arrays, PATH) == []


@settings(max_examples=60, deadline=None)
@given(valid_files(), st.sampled_from(REQUIRED_KEYS), st.data())
def test_one_nan_anywhere_is_caught(arrays, key, data):
    target = arrays[key]
    index = data.draw(st.integers(0, target.size - 1))
    target.reshape(-1)[index] = np.nan
    with pytest.raises(ContractError) as excinfo:
        validate(arrays, PATH)
    assert any(
        p.key == key and "not finite" in p.message for p in excinfo.value.problems
    )


# Garbage that would otherwise come out as a succeeded reconstruction (issue 25).


def centred_probe(size: int = 16) -> np.ndarray:
    r2 = (np.arange(size) - size / 2) ** 2
    return np.exp(-np.add.outer(r2, r2) / 8).astype(np.complex64)


def test_patterns_that_recorded_no_photon_are_refused():
    arrays = make_file(np.random.default_rng(20), metadata=False)
    arrays["diffraction"] = np.zeros_like(arrays["diffraction"])

    assert_problem(problems_of(arrays), "diffraction", "every value is zero")


def test_a_probe_stored_fftshifted_is_refused():
    arrays = make_file(np.random.default_rng(21), size=16, metadata=False)
    arrays["probeGuess"] = np.fft.fftshift(centred_probe())

    assert_problem(
        problems_of(arrays), "probeGuess", "closer to the corners", "ifftshift"
    )


def test_a_centred_probe_passes():
    arrays = make_file(np.random.default_rng(21), size=16, metadata=False)
    arrays["probeGuess"] = centred_probe() * np.float32(40)

    assert validate(arrays, PATH) == []


def test_an_n_n_n_stack_read_as_n_patterns_is_refused():
    """(N, N, n) with n == N passes every shape check: the spread gives it away."""
    arrays = make_file(np.random.default_rng(22), n=16, size=16, metadata=False)
    arrays["diffraction"] = np.ascontiguousarray(
        np.moveaxis(arrays["diffraction"], 0, -1)
    )

    assert_problem(problems_of(arrays), "diffraction", "spreads evenly", "(N, N, n)")


def test_a_dead_frame_is_a_warning_naming_it(caplog):
    arrays = make_file(np.random.default_rng(23), n=6, metadata=False)
    arrays["diffraction"][4] = 0

    (warning,) = validate(arrays, PATH)

    assert warning.startswith("diffraction: 1 of 6 patterns hold only zeros")
    assert "index 4" in warning


def test_a_probe_far_stronger_than_the_patterns_is_a_warning():
    arrays = make_file(np.random.default_rng(24), size=16, metadata=False)
    power = np.mean(np.sum(arrays["diffraction"].astype(float) ** 2, axis=(1, 2)))
    probe = centred_probe()
    arrays["probeGuess"] = probe * np.float32(
        np.sqrt(1e6 * power / np.sum(np.abs(probe) ** 2))
    )

    (warning,) = validate(arrays, PATH)

    assert warning.startswith("probeGuess: its power") and "1e+06x" in warning


def test_saturated_patterns_are_named_as_such():
    arrays = make_file(np.random.default_rng(25), n=6, size=16, metadata=False)
    arrays["diffraction"] = np.minimum(arrays["diffraction"], np.float32(2.0))

    assert_problem(problems_of(arrays), "diffraction", "saturated, clipped patterns")
