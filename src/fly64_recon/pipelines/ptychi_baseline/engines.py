"""pty-chi's engines: the registry, and each engine's options from the parameters.

``ptychi_baseline.engine`` names one of pty-chi's engines by its own name (the members
of ``ptychi.api.Reconstructors``); its options live under the lower-case key (the
enum's value: ``lsqml``, ``epie``, ``ad_ptycho``) with pty-chi's section names, and are
built through that engine's typed options class (``ENGINES``). What an engine cannot do
is refused here, before any job runs (``check_options``). Running one is ``task.py``'s.

``ptychi`` costs seconds to import, and every ``kedro`` command imports this module
(``register_pipelines``), so it is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

OPTION_SECTIONS = (
    "data_options",
    "reconstructor_options",
    "object_options",
    "probe_options",
    "probe_position_options",
    "opr_mode_weight_options",
)


# pty-chi options the project sets itself, and why: written in the parameters they
# are refused, never silently replaced.
FORCED = (
    ("reconstructor_options", "default_device", "from ptychi_baseline.device"),
    ("reconstructor_options", "default_dtype", "float32: pty-chi has no float16"),
    (
        "data_options",
        "fft_shift",
        "the patterns are handed over with the DC term in the corner",
    ),
)


class OptionsError(ValueError):
    """An engine's parameters name an option pty-chi does not have, a bad value, or
    something the engine cannot do."""


@dataclass(frozen=True)
class Engine:
    """One of pty-chi's engines: its name, options class and what its loss measures."""

    name: str  # pty-chi's ``Reconstructors`` member
    options_class: str  # in ``ptychi.api``
    # What the loss table records when it is not the data misfit (None: it is).
    loss_is: str | None = None

    @property
    def key(self) -> str:
        """The engine's parameters key: ``lsqml``, ``epie``, ``ad_ptycho``."""
        return self.name.lower()

    def new_options(self) -> Any:
        """pty-chi's default options of this engine."""
        import ptychi.api  # noqa: PLC0415 - see the module docstring

        return getattr(ptychi.api, self.options_class)()


EXIT_WAVE_CHANGE = (
    "the exit-wave change sqrt(sum |psi_new - psi_old|^2) of each epoch, not a "
    "data misfit: it cannot be compared with another engine's loss"
)
ENGINES = {
    engine.name: engine
    for engine in (
        Engine("LSQML", "LSQMLOptions"),
        Engine("PIE", "PIEOptions"),
        Engine("EPIE", "EPIEOptions"),
        Engine("RPIE", "RPIEOptions"),
        Engine("DM", "DMOptions", EXIT_WAVE_CHANGE),
        Engine("RAAR", "RAAROptions", EXIT_WAVE_CHANGE),
        Engine("BH", "BHOptions"),
        Engine("AD_PTYCHO", "AutodiffPtychographyOptions"),
    )
}
# Engines that update with every position at once: batch_size means nothing to them.
NO_MINIBATCHES = ("DM", "RAAR")


def engine_named(name: str) -> Engine:
    """The engine ``ptychi_baseline.engine`` names, or an error listing them all."""
    if name not in ENGINES:
        raise OptionsError(
            f"ptychi_baseline.engine: unknown engine {name!r}; pty-chi's engines are "
            f"{', '.join(ENGINES)} (AD_PTYCHO: the autodiff engine)"
        )
    return ENGINES[name]


def build_options(engine: Engine, params: Mapping[str, Any], device: str) -> Any:
    """The engine's pty-chi options from its parameters, validated by pty-chi.

    The parameters mirror pty-chi's own option tree (``reconstructor_options.num_epochs``
    and so on); a name the engine's options do not have is an error naming it (and the
    engines that have it), not a silent no-op.
    """
    from ptychi.api import Devices, Dtypes  # noqa: PLC0415 - see the module docstring

    for section, name, why in FORCED:
        if name in (params.get(section) or {}):
            raise OptionsError(
                f"ptychi_baseline.{engine.key}.{section}.{name}: the project sets it "
                f"({why}); remove it from the parameters"
            )
    options = engine.new_options()
    for section, values in params.items():
        if section not in OPTION_SECTIONS:
            raise OptionsError(
                f"ptychi_baseline.{engine.key}: unknown section {section!r}; pty-chi's "
                f"{engine.options_class} has {', '.join(OPTION_SECTIONS)}"
            )
        _assign(getattr(options, section), values or {}, engine, (section,))
    reconstructor = options.reconstructor_options
    reconstructor.default_device = Devices.CPU if device == "cpu" else Devices.GPU
    reconstructor.default_dtype = Dtypes.FLOAT32
    options.data_options.fft_shift = False  # to_ptychi_inputs moves the DC term
    return options


def _assign(
    target: Any, values: Mapping[str, Any], engine: Engine, path: tuple[str, ...]
) -> None:
    where = f"ptychi_baseline.{engine.key}.{'.'.join(path)}"
    known = {f.name for f in dataclasses.fields(target)}
    for name, value in values.items():
        if name not in known:
            raise OptionsError(
                f"{where}: unknown option {name!r} for {engine.name} "
                f"({type(target).__name__} has no such option"
                f"{_elsewhere((*path, name))}); known: {', '.join(sorted(known))}"
            )
        current = getattr(target, name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            _assign(current, value, engine, (*path, name))
            continue
        try:
            setattr(target, name, value)
        except (ValueError, TypeError) as error:
            raise OptionsError(
                f"{where}.{name}: pty-chi refuses {value!r} for {engine.name}: {error}"
            ) from None


def _elsewhere(path: tuple[str, ...]) -> str:
    """``; EPIE, RPIE have it`` when other engines' options have this option."""
    having = [name for name, engine in ENGINES.items() if _has(engine, path)]
    return (
        f"; {', '.join(having)} {'has' if len(having) == 1 else 'have'} it"
        if having
        else ""
    )


def _has(engine: Engine, path: tuple[str, ...]) -> bool:
    target = engine.new_options()
    for name in path:
        if not dataclasses.is_dataclass(target) or name not in {
            f.name for f in dataclasses.fields(target)
        }:
            return False
        target = getattr(target, name)
    return True


def check_options(engine: Engine, params: Mapping[str, Any], options: Any) -> None:
    """pty-chi's own cross-checks, then what the engine cannot do: an error naming the
    parameter and the engine, before any job runs."""
    try:
        options.check()
    except (ValueError, NotImplementedError) as error:
        raise OptionsError(
            f"ptychi_baseline.{engine.key}: pty-chi refuses these options for "
            f"{engine.name}: {error}"
        ) from None
    refused = refusals(engine, params, options)
    if refused:
        raise OptionsError("; ".join(refused))


def refusals(engine: Engine, params: Mapping[str, Any], options: Any) -> list[str]:
    """What the engine cannot do among the options asked for, one sentence each."""
    from ptychi.api import PositionCorrectionTypes  # noqa: PLC0415

    key, words = engine.key, []
    batch_size = options.reconstructor_options.batch_size
    if engine.name == "PIE" and options.probe_options.optimizable and batch_size > 1:
        # pty-chi 2.2's PIEReconstructor.calculate_probe_step_weight lacks the batch
        # axis EPIE and RPIE have: it fails at the first probe update.
        words.append(
            f"ptychi_baseline.{key}: plain PIE cannot optimise the probe with "
            f"reconstructor_options.batch_size {batch_size} > 1 in pty-chi 2.2 (a bug "
            "in its probe step); set batch_size: 1, probe_options.optimizable: false, "
            "or use EPIE or RPIE"
        )
    if engine.name in NO_MINIBATCHES and "batch_size" in (
        params.get("reconstructor_options") or {}
    ):
        words.append(
            f"ptychi_baseline.{key}.reconstructor_options.batch_size: {engine.name} "
            "updates with every position at once (no minibatches); remove it "
            "(reconstructor_options.chunk_length sets how many exit waves are "
            "computed at a time)"
        )
    correction = options.probe_position_options.correction_options.correction_type
    if engine.name in NO_MINIBATCHES and correction != PositionCorrectionTypes.GRADIENT:
        words.append(
            f"ptychi_baseline.{key}.probe_position_options.correction_options."
            f"correction_type: {engine.name} supports gradient position correction "
            f"only, not {correction.value}"
        )
    return words


def rescales_probe_itself(engine: Engine, options: Any) -> bool:
    """Whether the engine scales the probe's power to the data (LSQML's first epoch)."""
    return engine.name == "LSQML" and bool(
        options.reconstructor_options.rescale_probe_intensity_in_first_epoch
    )
