"""Illumination, probe diameter, overlap, photons and the shot-noise floor."""

import numpy as np
import pytest

from fly64_recon.pipelines.simulate import physics
from fly64_recon.science import beam


def disc_probe(size: int, diameter: float) -> np.ndarray:
    """A flat-topped disc of ``diameter`` pixels, centred as DATA-001 centres a probe."""
    k = np.arange(size) - size // 2
    inside = np.hypot(k[:, None], k[None, :]) <= diameter / 2
    return inside.astype(np.complex64)


def test_illumination_places_each_footprint_on_the_object_grid():
    probe = np.ones((4, 4), np.complex64)

    lit = beam.illumination(probe, np.array([4.0, 6.0]), np.array([4.0, 4.0]), (10, 12))

    assert lit.sum() == 32  # two footprints of 16 pixels, each |1|^2
    assert lit[2:6, 2:4].tolist() == [[1, 1]] * 4
    assert lit[2:6, 4:6].tolist() == [[2, 2]] * 4  # where the footprints overlap
    assert lit[:2].sum() == lit[6:].sum() == 0


def test_footprints_at_the_edge_are_clipped():
    lit = beam.illumination(np.ones((4, 4), np.complex64), [1.0], [1.0], (6, 6))
    assert lit.sum() == 9


def test_the_mask_keeps_what_is_lit_at_or_above_the_fraction():
    lit = np.array([[0.0, 0.05, 0.1], [0.5, 1.0, 0.09]])

    mask = beam.illumination_mask(lit, 0.1)

    assert mask.tolist() == [[False, False, True], [True, True, False]]
    assert not beam.illumination_mask(np.zeros((2, 2)), 0.1).any()
    with pytest.raises(ValueError, match="fraction"):
        beam.illumination_mask(lit, 1.5)


@pytest.mark.parametrize("fwhm", [6.0, 12.0, 20.5])
def test_the_diameter_of_a_gaussian_beam_is_its_fwhm(fwhm):
    k = np.arange(64) - 32
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    intensity = np.exp(-np.add.outer(k**2, k**2) / (2 * sigma**2))

    assert beam.probe_diameter(np.sqrt(intensity)) == pytest.approx(fwhm, abs=0.2)


def test_a_flat_disc_measures_as_a_knife_edge_sees_it():
    assert beam.probe_diameter(disc_probe(64, 30.0)) == pytest.approx(
        30.0 * np.sqrt(3) / 2, abs=1.0
    )


def test_a_hot_centre_does_not_shrink_the_simulated_beam():
    probe = physics.make_probe(64, aperture=0.25, central_stop=0.3, beam_diameter=0.6)
    assert beam.probe_diameter(probe) == pytest.approx(0.6 * 64, rel=0.3)


def test_disc_overlap_is_one_at_zero_distance_and_zero_from_one_diameter():
    d = np.array([0.0, 5.0, 10.0, 20.0, 30.0])

    f = beam.disc_overlap(d, 20.0)

    assert f[0] == pytest.approx(1.0)
    assert f[3] == f[4] == 0.0
    assert 1 > f[1] > f[2] > 0
    # One radius apart, the lens area over the disc is 2/3 - sqrt(3)/(2 pi).
    assert f[2] == pytest.approx(2 / 3 - np.sqrt(3) / (2 * np.pi), abs=1e-9)


def test_scan_overlap_of_a_square_grid():
    ys, xs = np.meshgrid(np.arange(10) * 10.0, np.arange(10) * 10.0, indexing="ij")

    dense = beam.scan_overlap(xs.ravel(), ys.ravel(), 40.0)
    sparse = beam.scan_overlap(xs.ravel(), ys.ravel(), 12.0)
    apart = beam.scan_overlap(xs.ravel(), ys.ravel(), 9.0)

    assert dense > sparse > apart == 0.0
    assert beam.scan_overlap(np.array([1.0]), np.array([1.0]), 40.0) == 0.0


def test_photons_and_the_noise_floor():
    probe = np.ones((4, 4), np.complex64)
    lit = beam.illumination(probe, np.array([4.0, 6.0]), np.array([4.0, 4.0]), (10, 12))
    mask = beam.illumination_mask(lit, 0.1)

    photons = beam.photons_per_pixel(lit, probe, photons_per_pattern=1600.0)

    assert photons.sum() == pytest.approx(3200.0)  # two patterns of 1600 photons
    assert photons[4, 5] == 200.0  # overlap: two footprints of 100 per pixel
    floor = beam.phase_noise_floor(photons, mask)
    # 16 pixels saw one footprint (100 photons), 8 saw two (200).
    std = (16 * 0.05 + 8 * 0.5 / np.sqrt(200)) / 24
    assert floor["mae"] == pytest.approx(np.sqrt(2 / np.pi) * std)
    assert floor["mse"] == pytest.approx((16 * 0.05**2 + 8 * 0.25 / 200) / 24)
    nowhere = beam.phase_noise_floor(photons, np.zeros_like(mask))
    assert nowhere["mae"] == float("inf")


def test_describe_scan_and_the_no_overlap_warning():
    probe = disc_probe(16, 10.0)
    x = np.array([20.0, 26.0, 32.0])
    y = np.array([20.0, 20.0, 20.0])

    near = beam.describe_scan(probe, x, y, (48, 64), 1000.0, 0.1)
    far = beam.describe_scan(probe, x * 2, y, (48, 80), 1000.0, 0.1)

    assert near["probe_diameter_px"] == pytest.approx(10.0, abs=1.5)
    assert near["overlap"] > 0 and far["overlap"] == 0
    assert far["lit_area_px"] > near["lit_area_px"]
    assert near["photons_per_px2"] > far["photons_per_px2"]
    assert beam.overlap_warning(near["overlap"]) is None
    assert "overlap is 0" in beam.overlap_warning(far["overlap"])


def test_the_shot_noise_loss_is_what_poisson_noise_alone_leaves():
    rng = np.random.default_rng(0)
    expected = rng.uniform(0, 200, (200, 16, 16))  # dark and bright pixels
    counts = rng.poisson(expected)
    truth = 2 * np.mean((np.sqrt(counts) - np.sqrt(expected)) ** 2)

    estimate = beam.shot_noise_loss(np.array_split(counts, 3))

    assert estimate == pytest.approx(truth, rel=0.05)
    assert beam.shot_noise_loss([np.zeros((2, 4, 4))]) == 0.0
