"""The stopping rule: stop when the loss has stopped improving, or at the cap."""

import pytest

from fly64_recon.science.convergence import StoppingRule, StopReason


def test_an_improving_loss_keeps_going():
    rule = StoppingRule(window=2, tolerance=0.01)
    # The first epoch (LSQML's probe rescale) is left out; then two blocks of two.
    assert rule.check([99.0, 10.0, 9.0, 8.0]) is None  # too few epochs
    assert rule.check([99.0, 10.0, 9.0, 8.0, 7.0]) is None  # 9.5 -> 7.5


def test_a_flat_loss_has_converged():
    rule = StoppingRule(window=2, tolerance=0.01)

    verdict = rule.check([99.0, 4.0, 4.02, 3.99, 4.0])

    assert verdict is not None and verdict.converged
    assert verdict.stop_reason is StopReason.PLATEAU
    assert verdict.epochs_run == 5
    assert verdict.relative_improvement == pytest.approx((4.01 - 3.995) / 4.01)


def test_block_means_see_through_epoch_to_epoch_scatter():
    # Falling 5 % a block while single epochs jump by more than that.
    loss = [99.0, 10.0, 9.0, 10.3, 8.5, 9.7, 8.1]
    assert StoppingRule(window=3, tolerance=0.01).check(loss) is None


def test_a_rising_loss_stops_without_converging():
    verdict = StoppingRule(window=2, tolerance=0.01).check([99.0, 4.0, 4.0, 4.5, 4.8])

    assert verdict.stop_reason is StopReason.RISING and not verdict.converged


def test_a_plateau_with_noise_on_it_has_converged():
    # The last block 1 % worse: minibatch scatter on a flat loss, not a rise.
    verdict = StoppingRule(window=2, tolerance=0.01).check([99.0, 4.0, 4.0, 4.04, 4.04])

    assert verdict.stop_reason is StopReason.PLATEAU and verdict.converged


def test_the_cap_reached_while_improving_is_not_converged():
    rule = StoppingRule(window=2, tolerance=0.01)

    verdict = rule.final([99.0, 10.0, 8.0, 6.0, 4.0])

    assert verdict.stop_reason is StopReason.EPOCH_CAP and not verdict.converged
    assert verdict.to_dict() == {
        "epochs_run": 5,
        "stop_reason": "epoch_cap",
        "converged": False,
        "relative_improvement": pytest.approx((9 - 5) / 9),
    }
    assert rule.final([99.0, 4.0, 4.0, 4.0, 4.0]).converged  # flat when the cap came
    assert rule.final([99.0, 4.0]).relative_improvement is None  # too short to tell


def test_the_plateau_epoch_is_where_the_rule_would_have_stopped():
    rule = StoppingRule(window=2, tolerance=0.01)
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
    assert StoppingRule(window=2, tolerance=0.01).should_stop(flat[:5])
    assert judge.final(flat).converged and judge.final(flat).epochs_run == 7
    assert not judge.final([99.0, 10.0, 8.0, 6.0, 4.0]).converged
    with pytest.raises(ValueError, match="convergence.stop must be true or false"):
        StoppingRule(stop="no")


@pytest.mark.parametrize(
    ("window", "tolerance", "fragment"),
    [(0, 0.01, ">= 1"), (2.5, 0.01, "whole number"), (3, -1.0, ">= 0")],
)
def test_bad_parameters_are_named(window, tolerance, fragment):
    with pytest.raises(ValueError, match="ptychi_baseline.convergence") as error:
        StoppingRule(window=window, tolerance=tolerance)
    assert fragment in str(error.value)
