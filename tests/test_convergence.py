"""The stopping rule: stop when the loss has stopped improving, or at the cap."""

from collections.abc import Callable

import numpy as np
import pytest

from fly64_recon.science.convergence import (
    ChangeScale,
    Convergence,
    ObjectRule,
    StoppingRule,
    StopReason,
    Verdict,
)


def test_an_improving_loss_keeps_going():
    rule = StoppingRule(window=2, tolerance=0.01, stop=True)
    # The first epoch (LSQML's probe rescale) is left out; then two blocks of two.
    assert rule.check([99.0, 10.0, 9.0, 8.0]) is None  # too few epochs
    assert rule.check([99.0, 10.0, 9.0, 8.0, 7.0]) is None  # 9.5 -> 7.5


def test_a_flat_loss_has_converged():
    rule = StoppingRule(window=2, tolerance=0.01, stop=True)

    verdict = rule.check([99.0, 4.0, 4.02, 3.99, 4.0])

    assert verdict is not None and verdict.converged
    assert verdict.stop_reason is StopReason.PLATEAU
    assert verdict.epochs_run == 5
    assert verdict.relative_improvement == pytest.approx((4.01 - 3.995) / 4.01)


def test_block_means_see_through_epoch_to_epoch_scatter():
    # Falling 5 % a block while single epochs jump by more than that.
    loss = [99.0, 10.0, 9.0, 10.3, 8.5, 9.7, 8.1]
    assert StoppingRule(window=3, tolerance=0.01, stop=True).check(loss) is None


def test_a_rising_loss_stops_without_converging():
    verdict = StoppingRule(window=2, tolerance=0.01, stop=True).check(
        [99.0, 4.0, 4.0, 4.5, 4.8]
    )

    assert verdict.stop_reason is StopReason.RISING and not verdict.converged


def test_a_plateau_with_noise_on_it_has_converged():
    # The last block 1 % worse: minibatch scatter on a flat loss, not a rise.
    verdict = StoppingRule(window=2, tolerance=0.01, stop=True).check(
        [99.0, 4.0, 4.0, 4.04, 4.04]
    )

    assert verdict.stop_reason is StopReason.PLATEAU and verdict.converged


def test_the_cap_reached_while_improving_is_not_converged():
    rule = StoppingRule(window=2, tolerance=0.01, stop=True)

    verdict = rule.final([99.0, 10.0, 8.0, 6.0, 4.0])

    assert verdict.stop_reason is StopReason.EPOCH_CAP and not verdict.converged
    assert verdict.to_dict() == {
        "epochs_run": 5,
        "stop_reason": "epoch_cap",
        "converged": False,
        "relative_improvement": pytest.approx((9 - 5) / 9),
        "object_change": None,
    }
    assert rule.final([99.0, 4.0, 4.0, 4.0, 4.0]).converged  # flat when the cap came
    assert rule.final([99.0, 4.0]).relative_improvement is None  # too short to tell


def test_the_plateau_epoch_is_where_the_rule_would_have_stopped():
    rule = StoppingRule(window=2, tolerance=0.01, stop=True)
    loss = [99.0, 10.0, 8.0, 6.0, 4.0, 4.0, 4.0, 4.0, 4.0]

    # Blocks [6, 4] -> [4, 4] at epoch 7 (20 %), [4, 4] -> [4, 4] at 8.
    assert rule.plateau_epoch(loss) == 8
    assert rule.check(loss[:7]) is None and rule.check(loss[:8]).converged
    assert rule.plateau_epoch([99.0, 10.0, 8.0, 6.0, 4.0]) is None
    rising = [99.0, 4.0, 4.0, 4.5, 4.8]
    assert rule.plateau_epoch(rising) is None


def test_judging_without_stopping_runs_to_the_cap_and_keeps_the_verdict():
    judge = StoppingRule(window=2, tolerance=0.01, stop=False)
    flat = [99.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]

    assert not any(judge.should_stop(flat[:epoch]) for epoch in range(1, 8))
    assert StoppingRule(window=2, tolerance=0.01, stop=True).should_stop(flat[:5])
    assert judge.final(flat).converged and judge.final(flat).epochs_run == 7
    assert not judge.final([99.0, 10.0, 8.0, 6.0, 4.0]).converged
    with pytest.raises(ValueError, match="convergence.stop must be true or false"):
        StoppingRule(window=2, tolerance=0.01, stop="no")


@pytest.mark.parametrize(
    ("window", "tolerance", "fragment"),
    [(0, 0.01, ">= 1"), (2.5, 0.01, "whole number"), (3, -1.0, ">= 0")],
)
def test_bad_parameters_are_named(window, tolerance, fragment):
    with pytest.raises(ValueError, match="ptychi_baseline.convergence") as error:
        StoppingRule(window=window, tolerance=tolerance, stop=True)
    assert fragment in str(error.value)


# The object rule, on synthetic object sequences (N = 16 beam, 64 x 64 object).
SIZE = 64
MASK = np.zeros((SIZE, SIZE), bool)
MASK[8:56, 8:56] = True
PHOTONS = np.full((SIZE, SIZE), 400.0)  # floor: 1 / (2 sqrt(400)) = 0.025 rad RMS
PROBE = np.zeros((16, 16), complex)
PROBE[4:12, 4:12] = 1  # 8 px across: low frequencies below 1/8 cycles/px
Y, X = np.indices((SIZE, SIZE))
SLOW = np.sin(2 * np.pi * X / 32) * np.cos(2 * np.pi * Y / 48)  # coarser than the beam
# Pixel noise finer than a quarter cycle per pixel.
_NOISE = np.fft.fft2(np.random.default_rng(7).standard_normal((SIZE, SIZE)))
_FREQUENCY = np.hypot(*np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE)))
FINE = np.fft.ifft2(np.where(_FREQUENCY > 0.25, _NOISE, 0)).real
FINE /= FINE.std()


def sequence(low: Callable[[int], float], high: Callable[[int], float]):
    """The object after epoch e: a phase of ``low(e)`` rad of coarse structure and
    ``high(e)`` rad of pixel noise, over a global phase and a ramp that change too."""

    def object_at(epoch: int) -> np.ndarray:
        ramp = 0.01 * epoch * X + 0.3 * epoch
        return np.exp(1j * (low(epoch) * SLOW + high(epoch) * FINE + ramp))

    return object_at


def run_rule(rule: ObjectRule, object_at, epochs: int) -> Verdict:
    loss = []
    for epoch in range(1, epochs + 1):
        loss.append(1.0)
        if rule.should_stop(loss, lambda e=epoch: object_at(e)):
            break
    return rule.final(loss)


def object_rule(stop: bool = True) -> ObjectRule:
    scale = ChangeScale.of(MASK, PHOTONS, PROBE)
    loss_rule = StoppingRule(window=2, tolerance=0.01, stop=True)
    return ObjectRule(scale, loss_rule, span=10, settled=0.1, stop=stop)


def test_a_converging_object_stops_once_it_changes_less_than_the_floor_allows():
    # Its coarse structure approaches 1 rad geometrically; its pixels hold still.
    rule = object_rule()

    verdict = run_rule(rule, sequence(lambda e: 1 - 0.8**e, lambda e: 0.0), 200)

    assert verdict.stop_reason is StopReason.SETTLED and verdict.converged
    assert verdict.epochs_run % 5 == 0 and 20 <= verdict.epochs_run < 60
    assert verdict.object_change["low"] < 0.1
    # The change it measured before stopping was above the threshold.
    assert rule.changes[verdict.epochs_run - 5]["low"] >= 0.1


def test_a_stalled_object_still_drifting_runs_to_the_cap_unconverged():
    # Drifting by 0.002 rad an epoch, for ever: 0.02 rad per span of a pattern whose
    # RMS is 1/2, 0.01 rad RMS: 0.4 floors of 0.025 rad.
    rule = object_rule()

    verdict = run_rule(rule, sequence(lambda e: 0.002 * e, lambda e: 0.0), 60)

    assert verdict.stop_reason is StopReason.EPOCH_CAP and not verdict.converged
    assert verdict.epochs_run == 60
    assert verdict.object_change["low"] == pytest.approx(0.4, rel=0.2)


def test_fitting_noise_does_not_keep_a_settled_object_running():
    # Coarse structure settled; pixel noise growing (fitting the shot noise).
    rule = object_rule()

    verdict = run_rule(rule, sequence(lambda e: 1.0, lambda e: 0.01 * e), 100)

    assert verdict.converged and verdict.epochs_run == 15  # its first measurement
    assert verdict.object_change["high"] > 1 > verdict.object_change["low"]


def test_judging_the_object_without_stopping_gives_the_verdict_at_the_cap():
    verdict = run_rule(
        object_rule(stop=False), sequence(lambda e: 1 - 0.8**e, lambda e: 0.0), 70
    )

    assert verdict.epochs_run == 70 and verdict.converged


def test_no_scale_without_photons_or_beam():
    assert ChangeScale.of(MASK, np.zeros_like(PHOTONS), PROBE) is None
    assert ChangeScale.of(MASK, PHOTONS, np.zeros_like(PROBE)) is None


SETTINGS = {
    "rule": "object",
    "span": 20,
    "settled": 0.1,
    "window": 10,
    "tolerance": 1e-3,
    "stop": True,
    "gpu_epoch_cap": 300,
}


def test_the_settings_choose_the_rule_and_fall_back_to_the_loss_without_a_scale():
    scale = ChangeScale.of(MASK, PHOTONS, PROBE)

    assert isinstance(Convergence(**SETTINGS).for_job(scale), ObjectRule)
    assert isinstance(Convergence(**SETTINGS).for_job(None), StoppingRule)
    loss = Convergence(**{**SETTINGS, "rule": "loss"}).for_job(scale)
    assert loss == StoppingRule(window=10, tolerance=1e-3, stop=True)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("rule", "objects", "rule must be one of ('object', 'loss')"),
        ("span", 12, "span must be a multiple of 5 epochs"),
        ("settled", 0, "settled must be > 0"),
        ("gpu_epoch_cap", 0.5, "gpu_epoch_cap must be a whole number >= 1 or null"),
        ("window", 0, "window must be >= 1"),
    ],
)
def test_bad_settings_are_named(key, value, fragment):
    with pytest.raises(ValueError, match="ptychi_baseline.convergence") as error:
        Convergence(**{**SETTINGS, key: value})
    assert fragment in str(error.value)
