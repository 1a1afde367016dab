"""Alignment and metrics on synthetic arrays: perfect scores, known shifts, ramps, FRC."""

import numpy as np
import pytest
from scipy import ndimage

from fly64_recon.science import metrics as m

SHAPE = (96, 128)
REGION = (8, 88, 8, 120)
MASK = np.zeros(SHAPE, dtype=bool)
MASK[8:88, 8:120] = True


def _object(shape=SHAPE, seed=0) -> np.ndarray:
    """A complex object with structure at several scales, phase within +-1 rad."""
    rng = np.random.default_rng(seed)

    def field(sigma: float) -> np.ndarray:
        smooth = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
        return smooth / np.abs(smooth).max()

    amplitude = 0.75 + 0.2 * field(2.0) + 0.05 * field(0.7)
    phase = 0.8 * field(3.0) + 0.2 * field(1.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def _noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=image.shape) + 1j * rng.normal(size=image.shape)
    return image + sigma * noise


def test_identical_images_score_perfectly():
    truth = _object()
    result = m.compare(truth, truth, MASK, upsample_factor=20)

    for part in ("amplitude", "phase"):
        scores = result[part]
        assert scores["mae"] == pytest.approx(0, abs=1e-6)
        assert scores["mse"] == pytest.approx(0, abs=1e-10)
        assert scores["psnr"] > 100
        assert scores["ssim"] == pytest.approx(1, abs=1e-6)
        assert scores["ms_ssim"] == pytest.approx(1, abs=1e-6)
        assert scores["frc_0.5"] == 1.0
        assert "frc_1/7" not in scores  # the half-dataset criterion, not the truth's
    np.testing.assert_allclose(result["frc_curves"]["phase"], 1, atol=1e-6)
    assert result["alignment"]["shift_px"] == [0.0, 0.0]
    assert result["alignment"]["amplitude_scale"] == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("shift", [(1.3, -2.4), (-0.55, 0.25)])
def test_a_known_shift_is_recovered_and_undone(shift):
    truth = _object()
    moved = m.shift_complex(truth, shift)

    alignment, aligned = m.align(moved, truth, MASK, upsample_factor=20)

    np.testing.assert_allclose(alignment.shift_px, np.negative(shift), atol=0.06)
    _, phase = m.amplitude_and_phase(m.crop(truth, REGION), aligned)
    assert np.mean(np.abs(phase[1] - phase[0])) < 0.01


def test_phase_offset_ramp_and_amplitude_scale_are_removed():
    truth = _object()
    ramp = m.phase_ramp(SHAPE, 2.5, (0.02, -0.035))  # wraps several times
    distorted = 1.7 * truth * np.exp(1j * ramp)

    alignment, aligned = m.align(distorted, truth, MASK, upsample_factor=20)

    np.testing.assert_allclose(aligned, m.crop(truth, REGION), atol=1e-4)
    assert alignment.phase_ramp_rad_per_px == pytest.approx((-0.02, 0.035), abs=1e-5)
    assert alignment.amplitude_scale == pytest.approx(1 / 1.7, rel=1e-5)


def test_apply_alignment_reproduces_align():
    truth = _object()
    distorted = m.shift_complex(
        1.2 * truth * np.exp(1j * m.phase_ramp(SHAPE, -1.0, (0.01, 0.0))), (0.7, -1.1)
    )
    alignment, aligned = m.align(distorted, truth, MASK, upsample_factor=20)
    restored = m.Alignment.from_dict(alignment.to_dict())

    assert restored == alignment
    np.testing.assert_allclose(m.apply_alignment(distorted, restored), aligned)


def test_a_phase_error_of_two_pi_is_no_error():
    truth = np.full((32, 32), np.exp(1j * 3.1), dtype=np.complex64)
    wrapped = truth * np.exp(1j * 0.1)  # phase 3.2 reads as -3.08

    _, (truth_phase, phase) = m.amplitude_and_phase(truth, wrapped)

    np.testing.assert_allclose(phase - truth_phase, 0.1, atol=1e-5)


def test_more_noise_scores_worse():
    truth = _object()
    scores = [
        m.compare(_noisy(truth, sigma), truth, MASK, upsample_factor=10)["phase"]
        for sigma in (0.02, 0.1)
    ]
    low, high = scores

    assert low["mae"] < high["mae"] and low["mse"] < high["mse"]
    assert low["psnr"] > high["psnr"]
    assert low["ssim"] > high["ssim"] and low["ms_ssim"] > high["ms_ssim"]
    assert low["frc_0.5"] >= high["frc_0.5"] and high["frc_0.5"] < 1


def test_frc_of_identical_images_is_one_and_of_independent_noise_is_small():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 128, 160))

    frequency, same = m.frc(a, a)
    _, independent = m.frc(a, b)

    assert frequency[0] == pytest.approx(1 / 128)
    assert frequency[-1] == pytest.approx(0.5)
    np.testing.assert_allclose(same, 1, atol=1e-12)
    assert np.abs(independent).mean() < 0.15
    assert m.frc_crossing(frequency, independent, 0.5) == pytest.approx(1 / 64)


def test_frc_crossing_interpolates_and_is_one_when_never_crossed():
    frequency = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    curve = np.array([0.9, 0.7, 0.3, 0.1, 0.05])

    assert m.frc_crossing(frequency, curve, 0.5) == pytest.approx(0.25 / 0.5)
    assert m.frc_crossing(frequency, np.ones(5), 0.5) == 1.0
    assert m.frc_crossing(frequency, np.zeros(5), 0.5) == pytest.approx(0.2)


def test_ms_ssim_uses_the_scales_that_fit():
    truth = _object((24, 24))
    estimate = _noisy(truth, 0.05).real

    everywhere = np.ones((24, 24), dtype=bool)

    scales = m.ssim_scales(truth.real, estimate, 2.0, everywhere)

    assert len(scales) == 2  # 24 and 12 px; 6 px is smaller than the SSIM window
    assert scales[0] == pytest.approx(m.ssim(truth.real, estimate, 2.0, everywhere))
    assert m.ms_ssim([1.0, 1.0]) == 1.0
    assert m.ms_ssim([0.5, -0.2]) == 0.0


def test_the_region_is_the_mask_bounding_box_and_must_be_measurable():
    mask = np.zeros((100, 100), dtype=bool)
    mask[22:48, 12:58] = True
    mask[30, 70] = True

    assert m.mask_region(mask) == (22, 48, 12, 71)
    with pytest.raises(ValueError, match="empty"):
        m.mask_region(np.zeros((10, 10), dtype=bool))
    small = np.zeros((100, 100), dtype=bool)
    small[10:15, 10:40] = True
    with pytest.raises(ValueError, match="too small"):
        m.mask_region(small)


def test_errors_outside_the_mask_do_not_count():
    truth = _object()
    damaged = truth.copy()
    damaged[:, 70:] = 1.0  # unlit: the flat start, never updated
    left = np.zeros(SHAPE, dtype=bool)
    left[8:88, 8:64] = True

    inside = m.compare(damaged, truth, left, upsample_factor=10)
    everywhere = m.compare(damaged, truth, MASK, upsample_factor=10)

    assert inside["phase"]["mae"] < 1e-3
    assert everywhere["phase"]["mae"] > 0.05


def test_the_null_reference_is_a_flat_object_on_the_same_mask():
    truth = _object()

    result = m.compare(truth, truth, MASK, upsample_factor=10)
    _, flat = m.null_reference(truth, MASK)
    region = m.mask_region(MASK)
    by_hand = np.mean(
        np.abs(np.angle(flat * np.conj(m.crop(truth, region))))[m.crop(MASK, region)]
    )

    assert result["null"]["phase"]["mae"] == pytest.approx(by_hand, rel=1e-6)
    assert result["null"]["phase"]["mae"] > 0.1  # the object's phase has structure
    assert result["phase"]["mae"] < 1e-6 < result["null"]["phase"]["mae"]
    assert np.ptp(np.abs(flat)) < 1e-6  # flat amplitude, the fitted scale


def test_the_null_reference_has_the_phase_ramp_removed():
    truth = np.exp(1j * m.phase_ramp(SHAPE, 0.4, (0.01, -0.02))).astype(np.complex64)

    _, flat = m.null_reference(truth, MASK)

    region = m.mask_region(MASK)
    np.testing.assert_allclose(flat, m.crop(truth, region), atol=1e-4)


def test_alignment_beyond_its_bounds_is_named():
    alignment = m.Alignment((0, 10, 0, 10), (0.3, 0.9), 0.1, 0.0, (0.0, 0.06), 1.0)

    found = alignment.excess(max_shift_px=0.5, max_ramp_rad_per_px=0.05)

    assert len(found) == 2
    assert "0.95 px" in found[0] and "0.060 rad/px" in found[1]
    assert alignment.excess(1.0, 0.1) == []


def test_half_dataset_frc_of_two_noisy_copies_crosses_where_the_noise_wins():
    truth = _object()
    clean = m.half_dataset_frc(truth, truth, MASK, upsample_factor=10)
    first, second = _noisy(truth, 0.3, seed=1), _noisy(truth, 0.3, seed=2)
    noisy = m.half_dataset_frc(first, second, MASK, upsample_factor=10)

    assert clean["frc_1/7"] == clean["frc_half_bit"] == 1.0
    assert noisy["frc_1/7"] < 1.0 and noisy["frc_half_bit"] < 1.0
    # The half-bit curve lies above 1/7 at these ring sizes: it crosses first.
    assert noisy["frc_half_bit"] <= noisy["frc_1/7"]


def test_the_half_bit_threshold_falls_towards_its_asymptote():
    curve = m.half_bit_threshold((128, 128))

    assert curve[0] > curve[-1] > 0.1716  # (0.2071) / (1.2071) for huge rings
    assert curve[-10:].mean() < curve[10:20].mean() < curve[:10].mean()


def test_flatness_looks_at_amplitude_and_phase():
    flat = np.full((8, 8), 2.0 * np.exp(0.3j), dtype=np.complex64)

    assert m.is_flat(flat, 1e-6)
    assert not m.is_flat(flat * np.exp(1j * np.eye(8) * 1e-3), 1e-6)
    assert not m.is_flat(flat * (1 + np.eye(8) * 1e-3), 1e-6)


def test_data_fit_reports_the_loss_curve():
    fit = m.data_fit(np.array([5.0, 1.0, 0.5, 0.6]))

    assert fit == {
        "final_loss": 0.6,
        "min_loss": 0.5,
        "epochs": 4,
        "loss": [5.0, 1.0, 0.5, 0.6],
    }
