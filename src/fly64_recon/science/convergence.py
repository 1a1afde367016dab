"""When a reconstruction has converged: by default, when its object has stopped
changing against what its data can tell; or (``rule: loss``) when its loss has stopped
improving.

The object rule (``ObjectRule``): every ``OBJECT_EVERY`` epochs the object is compared
with the one ``span`` epochs before, on the job's lit pixels, after taking out the
global phase and the linear phase ramp (as the scoring does), as the RMS phase change
at spatial frequencies coarser than the beam (the ones LSQML recovers slowly from a flat
start) in units of the RMS phase error the job's photons per lit pixel allow
(``ChangeScale``: no ground truth needed). Below ``settled`` floors the job stops:
converged. The finer frequencies are not judged: from the first epochs on they move by
a steady 0.2-0.7 floors per block, the minibatches' own jitter, at every dose
(docs/metrics.md has the measurements).

The loss rule (``StoppingRule``): after each epoch the mean loss of the last ``window``
epochs is compared with the mean of the ``window`` epochs before: their relative
improvement ``(before - last) / |before|`` below ``tolerance`` stops the job:
converged, unless the loss is clearly rising (the last block ``RISING_BEYOND`` worse
than the one before, beyond the minibatch scatter: a sign of instability, not of a
plateau). It holds for every engine whose loss is a data misfit (DM and RAAR record the
exit-wave change instead, and run without a rule). Whatever the rule, the loss rule's
``plateau_epoch`` says where the loss had stopped improving.

A job that reaches the epoch cap first was still changing: ``converged: false``. With
``stop: false`` a rule judges and does not stop: every job runs its epoch cap (a fixed
budget, as when reconstructions are compared at equal iterations), the verdict is the
rule's at the cap.

Why block means for the loss: with minibatches in random order, the loss scatters from
one epoch to the next by more than it falls (0.7-9 % at dose 1e5 in the embedded
study), so a comparison of two single epochs stops jobs whose phase error is still
falling fast. The first epoch is left out: LSQML spends it rescaling the probe
(``rescale_probe_intensity_in_first_epoch``); for the other engines it is the first,
steep step from the flat start. The loss cannot see a slowly recovering low spatial
frequency at high dose: the object rule can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from fly64_recon.science import beam
from fly64_recon.science import metrics as m


class StopReason(str, Enum):
    """Why a reconstruction stopped."""

    PLATEAU = "loss_plateau"
    RISING = "loss_rising"
    SETTLED = "object_settled"
    EPOCH_CAP = "epoch_cap"


@dataclass(frozen=True)
class Verdict:
    """How a reconstruction ended."""

    epochs_run: int
    stop_reason: StopReason
    relative_improvement: float | None
    # The object rule's last measurement: {"low": ..., "high": ...} in floors.
    object_change: dict[str, float] | None = None

    @property
    def converged(self) -> bool:
        return self.stop_reason in (StopReason.PLATEAU, StopReason.SETTLED)

    def to_dict(self) -> dict[str, object]:
        return {
            "epochs_run": self.epochs_run,
            "stop_reason": self.stop_reason.value,
            "converged": self.converged,
            "relative_improvement": self.relative_improvement,
            "object_change": self.object_change,
        }


SKIPPED_EPOCHS = 1  # the probe-rescale epoch
# Ten-epoch means scatter by about a third of single epochs (0.2-3 % at dose 1e5): a
# block 5 % worse than the one before is a rise, not noise on a plateau.
RISING_BEYOND = 0.05


@dataclass(frozen=True)
class StoppingRule:
    """Stop when the mean loss of the last ``window`` epochs improved on the mean of the
    ``window`` before by less than ``tolerance`` (relative)."""

    window: int
    tolerance: float
    stop: bool  # False: judge only; every job runs to the epoch cap

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

    name = "loss"

    def should_stop(
        self,
        loss: Sequence[float],
        current_object: Callable[[], np.ndarray] | None = None,
    ) -> bool:
        """Whether the job ends after this epoch (never, with ``stop: false``); the
        loss alone decides."""
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


OBJECT_EVERY = 5  # epochs between the objects the object rule keeps
RULES = ("object", "loss")


@dataclass(frozen=True)
class ChangeScale:
    """How much an object changed, in units of what its data can tell: the RMS phase
    change on the job's lit pixels (global phase and linear ramp taken out, as the
    scoring takes them out), below and above ``cutoff`` cycles/px, over the RMS phase
    error the photons per lit pixel allow."""

    mask: np.ndarray
    cutoff: float
    floor_rms: float

    @classmethod
    def of(
        cls, mask: np.ndarray, photons: np.ndarray, probe: np.ndarray
    ) -> ChangeScale | None:
        """Low frequencies are those coarser than the beam (one period per diameter).
        None where nothing is lit or no photon arrived: no scale to measure against."""
        floor = float(np.sqrt(beam.phase_noise_floor(photons, mask)["mse"]))
        diameter = beam.probe_diameter(probe)
        if not (np.isfinite(floor) and floor > 0 and diameter > 0):
            return None
        return cls(mask, 1 / diameter, floor)

    def lit(self, obj: np.ndarray) -> np.ndarray:
        """The part of an object the change is measured on (a copy)."""
        return m.crop(obj, m.mask_region(self.mask)).copy()

    def change(self, before: np.ndarray, after: np.ndarray) -> dict[str, float]:
        """``{"low": ..., "high": ...}``: the phase change from ``before`` to ``after``
        (whole objects, or their ``lit`` parts) in floor units."""
        region = m.mask_region(self.mask)
        lit = m.crop(self.mask, region)
        old, new = (
            obj if obj.shape == lit.shape else m.crop(obj, region)
            for obj in (before, after)
        )
        offset, gy, gx = m.fit_phase(old, new, lit)
        levelled = new * np.exp(1j * m.phase_ramp(new.shape, offset, (gy, gx)))
        # The mask's edge tapered, so that a fine change does not leak into the low
        # frequencies through it.
        weight = m.window(lit)
        phase = np.where(lit, np.angle(levelled * np.conj(old)), 0.0) * weight
        spectrum = np.abs(np.fft.fft2(phase)) ** 2 / phase.size
        fy = np.fft.fftfreq(phase.shape[0])[:, None]
        fx = np.fft.fftfreq(phase.shape[1])[None, :]
        low = np.hypot(fy, fx) < self.cutoff
        n = np.sum(weight**2)
        return {
            "low": float(np.sqrt(spectrum[low].sum() / n)) / self.floor_rms,
            "high": float(np.sqrt(spectrum[~low].sum() / n)) / self.floor_rms,
        }


@dataclass
class ObjectRule:
    """Stop when the object changed by less than ``settled`` noise floors (low spatial
    frequencies) over the last ``span`` epochs. One per job: it keeps the objects it
    compares (their lit parts, every ``OBJECT_EVERY`` epochs, ``span`` back)."""

    scale: ChangeScale
    loss_rule: StoppingRule  # judges the loss alongside: plateau_epoch
    span: int
    settled: float
    stop: bool
    changes: dict[int, dict[str, float]] = field(default_factory=dict)
    _kept: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    name = "object"

    def observe(self, epoch: int, current_object: Callable[[], np.ndarray]) -> None:
        """Keep the object at every ``OBJECT_EVERY``-th epoch; measure its change."""
        if epoch % OBJECT_EVERY:
            return
        now = self.scale.lit(current_object())
        before = self._kept.pop(epoch - self.span, None)
        if before is not None:
            self.changes[epoch] = self.scale.change(before, now)
        self._kept[epoch] = now

    def should_stop(
        self,
        loss: Sequence[float],
        current_object: Callable[[], np.ndarray] | None = None,
    ) -> bool:
        """Whether the job ends after this epoch (never, with ``stop: false``)."""
        if current_object is not None:
            self.observe(len(loss), current_object)
        return self.stop and self._settled(len(loss)) is not None

    def _settled(self, epoch: int) -> Verdict | None:
        change = self.changes.get(epoch)
        if change is None or change["low"] >= self.settled:
            return None
        return Verdict(epoch, StopReason.SETTLED, None, change)

    def final(self, loss: Sequence[float]) -> Verdict:
        """The verdict of a run that ended: the object settled (at its end, or at the
        last measurement with ``stop: false``), else the epoch cap."""
        last = max(self.changes, default=None)
        settled = self._settled(last) if last is not None else None
        if settled is not None and (not self.stop or last == len(loss)):
            return Verdict(len(loss), StopReason.SETTLED, None, settled.object_change)
        return Verdict(
            len(loss),
            StopReason.EPOCH_CAP,
            self.loss_rule.improvement(loss),
            self.changes.get(last) if last is not None else None,
        )

    def plateau_epoch(self, loss: Sequence[float]) -> int | None:
        return self.loss_rule.plateau_epoch(loss)


@dataclass(frozen=True)
class Convergence:
    """``ptychi_baseline.convergence``: which rule decides, and each rule's settings.
    Every default is in conf/base; ``gpu_epoch_cap`` replaces the engine's
    ``num_epochs`` on a GPU (None: the same cap)."""

    rule: str
    window: int
    tolerance: float
    span: int
    settled: float
    stop: bool
    gpu_epoch_cap: int | None

    def __post_init__(self) -> None:
        where = "ptychi_baseline.convergence"
        if self.rule not in RULES:
            raise ValueError(f"{where}.rule must be one of {RULES}, got {self.rule!r}")
        if (
            isinstance(self.span, bool)
            or not isinstance(self.span, int)
            or self.span < OBJECT_EVERY
            or self.span % OBJECT_EVERY
        ):
            raise ValueError(
                f"{where}.span must be a multiple of {OBJECT_EVERY} epochs, "
                f"got {self.span!r}"
            )
        if not (isinstance(self.settled, int | float) and self.settled > 0):
            raise ValueError(f"{where}.settled must be > 0, got {self.settled!r}")
        if self.gpu_epoch_cap is not None and not (
            isinstance(self.gpu_epoch_cap, int) and self.gpu_epoch_cap >= 1
        ):
            raise ValueError(
                f"{where}.gpu_epoch_cap must be a whole number >= 1 or null, "
                f"got {self.gpu_epoch_cap!r}"
            )
        self.loss_rule()  # its checks name a bad window, tolerance or stop

    def loss_rule(self) -> StoppingRule:
        return StoppingRule(
            window=self.window, tolerance=self.tolerance, stop=self.stop
        )

    def for_job(self, scale: ChangeScale | None) -> StoppingRule | ObjectRule:
        """The rule that decides for one job (the loss rule where there is no scale:
        nothing lit, or no photons)."""
        if self.rule == "loss" or scale is None:
            return self.loss_rule()
        return ObjectRule(scale, self.loss_rule(), self.span, self.settled, self.stop)
