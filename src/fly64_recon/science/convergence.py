"""When a reconstruction has converged: the loss has stopped improving.

The rule is the engine's loss alone, so it holds for every engine whose loss is a data
misfit (DM and RAAR record the exit-wave change instead, and run without it). After each
epoch the mean loss of the last ``window`` epochs is compared with the mean of the
``window`` epochs before: their relative improvement ``(before - last) / |before|`` below
``tolerance`` stops the job: converged, unless the loss is clearly rising (the last
block ``RISING_BEYOND`` worse than the one before, beyond the minibatch scatter: a sign
of instability, not of a plateau). A job that reaches the epoch cap first was still
improving: ``converged: false``.

With ``stop: false`` the rule judges and does not stop: every job runs its epoch cap (a
fixed budget, as when reconstructions are compared at equal iterations), the verdict is
the rule's at the cap, and ``plateau_epoch`` says where it would have stopped. The loss
is a data misfit dominated by shot noise, so at high dose the error goes on falling
well after it has stopped (docs/metrics.md).

Why block means: with minibatches in random order, the loss scatters from one epoch to
the next by more than it falls (0.7-9 % at dose 1e5 in the embedded study), so a
comparison of two single epochs stops jobs whose phase error is still falling fast.
The first epoch is left out: LSQML spends it rescaling the probe
(``rescale_probe_intensity_in_first_epoch``); for the other engines it is the first,
steep step from the flat start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class StopReason(str, Enum):
    """Why a reconstruction stopped."""

    PLATEAU = "loss_plateau"
    RISING = "loss_rising"
    EPOCH_CAP = "epoch_cap"


@dataclass(frozen=True)
class Verdict:
    """How a reconstruction ended."""

    epochs_run: int
    stop_reason: StopReason
    relative_improvement: float | None

    @property
    def converged(self) -> bool:
        return self.stop_reason is StopReason.PLATEAU

    def to_dict(self) -> dict[str, object]:
        return {
            "epochs_run": self.epochs_run,
            "stop_reason": self.stop_reason.value,
            "converged": self.converged,
            "relative_improvement": self.relative_improvement,
        }


SKIPPED_EPOCHS = 1  # the probe-rescale epoch
# Ten-epoch means scatter by about a third of single epochs (0.2-3 % at dose 1e5): a
# block 5 % worse than the one before is a rise, not noise on a plateau.
RISING_BEYOND = 0.05


@dataclass(frozen=True)
class StoppingRule:
    """Stop when the mean loss of the last ``window`` epochs improved on the mean of the
    ``window`` before by less than ``tolerance`` (relative)."""

    window: int = 10
    tolerance: float = 1e-3
    # False: judge only; every job runs to the epoch cap.
    stop: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.stop, bool):
            raise ValueError(
                f"ptychi_baseline.convergence.stop must be true or false, "
                f"got {self.stop!r}"
            )
        if isinstance(self.window, bool) or not isinstance(self.window, int):
            raise ValueError(
                f"ptychi_baseline.convergence.window must be a whole number of "
                f"epochs, got {self.window!r}"
            )
        if self.window < 1:
            raise ValueError(
                f"ptychi_baseline.convergence.window must be >= 1, got {self.window}"
            )
        if not self.tolerance >= 0:
            raise ValueError(
                f"ptychi_baseline.convergence.tolerance must be >= 0, "
                f"got {self.tolerance!r}"
            )

    def improvement(self, loss: Sequence[float]) -> float | None:
        """Relative improvement of the last block's mean loss (None: too few epochs)."""
        usable = list(loss)[SKIPPED_EPOCHS:]
        if len(usable) < 2 * self.window:
            return None
        before = sum(usable[-2 * self.window : -self.window]) / self.window
        last = sum(usable[-self.window :]) / self.window
        if before == 0:
            return 0.0
        return float((before - last) / abs(before))

    def check(self, loss: Sequence[float]) -> Verdict | None:
        """The verdict once the loss has stopped improving, else None (keep going)."""
        change = self.improvement(loss)
        if change is None or change >= self.tolerance:
            return None
        reason = StopReason.PLATEAU if change >= -RISING_BEYOND else StopReason.RISING
        return Verdict(len(loss), reason, change)

    def should_stop(self, loss: Sequence[float]) -> bool:
        """Whether the job ends after this epoch (never, with ``stop: false``)."""
        return self.stop and self.check(loss) is not None

    def plateau_epoch(self, loss: Sequence[float]) -> int | None:
        """The first epoch at which the loss had stopped improving (None: never)."""
        for epoch in range(SKIPPED_EPOCHS + 2 * self.window, len(loss) + 1):
            verdict = self.check(loss[:epoch])
            if verdict is not None and verdict.converged:
                return epoch
        return None

    def final(self, loss: Sequence[float]) -> Verdict:
        """The verdict of a run that ended: stopped by the rule, or by the epoch cap."""
        return self.check(loss) or Verdict(
            len(loss), StopReason.EPOCH_CAP, self.improvement(loss)
        )
