"""When a reconstruction has converged: the loss has stopped improving.

The rule is the engine's loss alone, so it holds for every engine: after each epoch,
the relative improvement over the last ``window`` epochs,
``(loss[e - window] - loss[e]) / |loss[e - window]|``, is compared with ``tolerance``.
Below it the job stops: converged if the loss is flat (within the tolerance), not
converged if it is rising. A job that reaches the epoch cap first was still improving:
``converged: false``.
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


@dataclass(frozen=True)
class StoppingRule:
    """Stop when the loss improved by less than ``tolerance`` over ``window`` epochs."""

    window: int = 10
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
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
        """Relative improvement over the last ``window`` epochs (None: too few yet)."""
        if len(loss) <= self.window:
            return None
        before, now = loss[-1 - self.window], loss[-1]
        if before == 0:
            return 0.0
        return float((before - now) / abs(before))

    def check(self, loss: Sequence[float]) -> Verdict | None:
        """The verdict once the loss has stopped improving, else None (keep going)."""
        change = self.improvement(loss)
        if change is None or change >= self.tolerance:
            return None
        reason = StopReason.PLATEAU if change > -self.tolerance else StopReason.RISING
        return Verdict(len(loss), reason, change)

    def final(self, loss: Sequence[float]) -> Verdict:
        """The verdict of a run that ended: stopped by the rule, or by the epoch cap."""
        return self.check(loss) or Verdict(
            len(loss), StopReason.EPOCH_CAP, self.improvement(loss)
        )
