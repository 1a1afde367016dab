"""Properties (hypothesis) of the DATA-001 validator and of the views' spacing selection.

``test_contract.py`` already has: valid files are accepted, one NaN anywhere is caught.
``test_simulate.py`` has the greedy selection against a brute force on fixed scans.
Here: the validator never crashes on anything array-shaped, lists every missing key,
counts bad values exactly, judges footprints by the DATA-001 rule, and lets measured
data of any scale through; the spacing rules keep their promise on any point set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import simulate_phase_c, tiny_simulate_params
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import cdist, pdist

from fly64_recon.contract import REQUIRED_KEYS, ContractError, validate
from fly64_recon.science import views

PATH = "phase_c/dose_1000/patched_test.npz"
OPTIONAL_KEYS = ("Y", "scan_index", "xcoords_start", "ycoords_start", "_metadata")
DTYPES = (
    np.float16,
    np.float32,
    np.float64,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
    np.complex64,
    np.complex128,
    np.dtype("<U6"),
    np.dtype("S4"),
)
SETTINGS = settings(max_examples=80, deadline=None)


@pytest.fixture(scope="module")
def good() -> dict[str, np.ndarray]:
    """A real simulated file (N = 16), as the simulate pipeline writes it."""
    params = tiny_simulate_params(patch_size=16, object_size=48, rows=6)
    return simulate_phase_c(params, 1000.0)["test"]


def fresh(good: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value.copy() for key, value in good.items()}


# The validator.


@st.composite
def anything_array_shaped(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Any subset of the DATA-001 keys, each of any dtype and small shape."""
    keys = draw(st.lists(st.sampled_from(REQUIRED_KEYS + OPTIONAL_KEYS), unique=True))
    return {
        key: draw(
            hnp.arrays(
                draw(st.sampled_from(DTYPES)),
                hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
            )
        )
        for key in keys
    }


@SETTINGS
@given(anything_array_shaped())
def test_the_validator_answers_anything_with_warnings_or_a_contract_error(arrays):
    try:
        warnings = validate(arrays, PATH)
    except ContractError as error:
        assert str(error).startswith(f"{PATH} breaks the DATA-001 contract:")
        assert error.problems
        assert {p.key for p in error.problems} <= set(REQUIRED_KEYS + OPTIONAL_KEYS)
    else:
        assert set(REQUIRED_KEYS) <= set(arrays)
        assert all(isinstance(w, str) for w in warnings)


@SETTINGS
@given(st.sets(st.sampled_from(REQUIRED_KEYS), min_size=1))
def test_every_missing_key_is_listed(good, missing):
    arrays = {k: v for k, v in good.items() if k not in missing}

    with pytest.raises(ContractError) as info:
        validate(arrays, PATH)

    listed = {
        p.key for p in info.value.problems if p.message == "required key is missing"
    }
    assert listed == missing


@SETTINGS
@given(st.data())
def test_bad_amplitudes_are_counted_exactly(good, data):
    arrays = fresh(good)
    diffraction = arrays["diffraction"].reshape(-1)
    cells = data.draw(
        st.lists(
            st.integers(0, diffraction.size - 1), min_size=1, max_size=20, unique=True
        )
    )
    kinds = data.draw(
        st.lists(
            st.sampled_from(["nan", "inf", "negative"]),
            min_size=len(cells),
            max_size=len(cells),
        )
    )
    values = {"nan": np.nan, "inf": np.inf, "negative": -0.5}
    for cell, kind in zip(cells, kinds, strict=True):
        diffraction[cell] = values[kind]

    with pytest.raises(ContractError) as info:
        validate(arrays, PATH)

    messages = [p.message for p in info.value.problems if p.key == "diffraction"]
    nan, inf, negative = (kinds.count(k) for k in ("nan", "inf", "negative"))
    size = diffraction.size
    if nan + inf:
        assert (
            f"{nan + inf} of {size} values are not finite ({nan} NaN, {inf} Inf)"
            in (messages)
        )
    if negative:
        assert any(
            m.startswith(f"{negative} of {size} values are negative") for m in messages
        )
    assert len(messages) == bool(nan + inf) + bool(negative)


@SETTINGS
@given(
    st.integers(0, 1000),
    st.sampled_from(["xcoords", "ycoords"]),
    st.floats(-40.0, 40.0, allow_nan=False),
)
def test_footprints_are_judged_by_the_data_001_rule(good, pick, key, shift):
    arrays = fresh(good)
    index = pick % len(arrays[key])
    arrays[key][index] += shift
    size = arrays["probeGuess"].shape[0]
    height, width = arrays["objectGuess"].shape
    x, y = arrays["xcoords"], arrays["ycoords"]
    inside = (
        (x - size / 2 >= -1e-6).all()
        and (x + size / 2 <= width + 1e-6).all()
        and (y - size / 2 >= -1e-6).all()
        and (y + size / 2 <= height + 1e-6).all()
    )

    if inside:
        assert validate(arrays, PATH) == []
    else:
        with pytest.raises(ContractError) as info:
            validate(arrays, PATH)
        (problem,) = info.value.problems
        assert problem.key == "objectGuess" and "fall outside" in problem.message


@SETTINGS
@given(st.floats(1e-3, 1e6))
def test_measured_data_of_any_scale_validate(good, scale):
    """No _metadata (measured data): any positive scale gives a warning at most."""
    arrays = fresh(good)
    del arrays["_metadata"]
    arrays["diffraction"] = (arrays["diffraction"] * scale).astype(np.float32)

    assert len(validate(arrays, PATH)) <= 1


@SETTINGS
@given(st.floats(1e-3, 1e3).filter(lambda f: not 0.2 < f < 5.0))
def test_a_wrong_intensity_scale_is_refused(good, factor):
    """Counts far from the dose (a factor > 5 off) are refused with the metadata's numbers."""
    arrays = fresh(good)
    metadata = json.loads(str(arrays["_metadata"]))
    metadata["intensity_scale"] *= np.sqrt(factor)
    arrays["_metadata"] = np.array(json.dumps(metadata))

    with pytest.raises(ContractError) as info:
        validate(arrays, PATH)

    assert {p.key for p in info.value.problems} == {"diffraction"}
    assert any("but the dose is 1000" in p.message for p in info.value.problems)


# The spacing selection of views.

coordinates = st.one_of(
    st.floats(0.0, 120.0, allow_nan=False, width=32),
    st.integers(0, 12).map(lambda i: i * 10.0),  # ties at exact distances
)
points_sets = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 40), st.just(2)),
    elements=coordinates,
)
thresholds = st.one_of(st.floats(0.0, 60.0), st.sampled_from([10.0, 20.0, 50.0]))


def nearest_distance(points: np.ndarray) -> np.ndarray:
    """Each point's distance to its nearest other point (inf when alone)."""
    distance = cdist(points, points)
    np.fill_diagonal(distance, np.inf)
    return distance.min(axis=1)


@SETTINGS
@given(points_sets, thresholds)
def test_nearest_neighbour_rule_is_the_definition(points, threshold):
    keep = views.nearest_neighbour_mask(points, threshold)

    np.testing.assert_array_equal(keep, nearest_distance(points) >= threshold)


@SETTINGS
@given(points_sets, thresholds)
def test_greedy_accepts_spaced_points_and_is_maximal(points, threshold):
    accepted = views.greedy_selection(points, threshold)
    rejected = np.setdiff1d(np.arange(len(points)), accepted)

    assert np.array_equal(accepted, np.unique(accepted))
    assert len(accepted) >= 1
    if len(accepted) > 1:
        assert pdist(points[accepted]).min() >= threshold
    if len(rejected):
        assert (cdist(points[rejected], points[accepted]).min(axis=1) < threshold).all()


@SETTINGS
@given(points_sets, thresholds, st.integers(0, 45))
def test_select_spaced_keeps_its_promise(points, threshold, min_positions):
    keep, strategy = views.select_spaced(points, threshold, min_positions)
    isolated = np.flatnonzero(nearest_distance(points) >= threshold)

    if len(keep) > 1:
        assert pdist(points[keep]).min() >= threshold
    assert np.array_equal(keep, np.unique(keep))
    if len(isolated) >= min_positions:
        assert strategy == "nearest_neighbour"
        np.testing.assert_array_equal(keep, isolated)
    else:
        assert strategy == "greedy"
        # Greedy never loses a point that the nearest-neighbour rule keeps.
        assert set(isolated) <= set(keep)
