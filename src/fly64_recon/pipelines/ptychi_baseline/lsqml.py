"""pty-chi LSQML, in-process: options from parameters, DATA-001 to pty-chi, one run.

``ptychi`` and ``torch`` cost seconds to import, and every ``kedro`` command imports
this module (``register_pipelines``), so they are imported inside the functions that need
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

OPTION_SECTIONS = (
    "data_options",
    "reconstructor_options",
    "object_options",
    "probe_options",
    "probe_position_options",
    "opr_mode_weight_options",
)


LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class OptionsError(ValueError):
    """The ``lsqml`` parameters name an option pty-chi does not have, or a bad value."""


@dataclass(frozen=True)
class PtychiInputs:
    """Arrays in pty-chi's conventions: intensities, (1, H, W) object, 4-D probe."""

    intensities: np.ndarray
    object_init: np.ndarray
    probe_init: np.ndarray
    position_x_px: np.ndarray
    position_y_px: np.ndarray


@dataclass(frozen=True)
class LSQMLResult:
    """What one LSQML run gives back, on the CPU."""

    object: np.ndarray
    probe: np.ndarray
    position_x_px: np.ndarray
    position_y_px: np.ndarray
    loss: np.ndarray
    device: str
    wall_time_s: float
    peak_gpu_memory_mb: float | None


def build_options(lsqml: Mapping[str, Any], device: str) -> Any:
    """pty-chi ``LSQMLOptions`` from the ``lsqml`` parameters, validated by pty-chi.

    The parameters mirror pty-chi's own option tree (``reconstructor_options.num_epochs``
    and so on); a name pty-chi does not know is an error, not a silent no-op.
    """
    from ptychi.api import Devices, Dtypes, LSQMLOptions

    options = LSQMLOptions()
    for section, values in lsqml.items():
        if section not in OPTION_SECTIONS:
            raise OptionsError(
                f"ptychi_baseline.lsqml: unknown section {section!r}; pty-chi's "
                f"LSQMLOptions has {', '.join(OPTION_SECTIONS)}"
            )
        _assign(getattr(options, section), values or {}, f"lsqml.{section}")
    reconstructor = options.reconstructor_options
    reconstructor.default_device = Devices.CPU if device == "cpu" else Devices.GPU
    reconstructor.default_dtype = Dtypes.FLOAT32
    options.data_options.fft_shift = False  # to_ptychi_inputs moves the DC term
    if device != "cpu" and "save_data_on_device" not in (
        lsqml.get("data_options") or {}
    ):
        # Keep the patterns on the GPU: otherwise every batch of every epoch is gathered
        # on the host and copied to the device from pageable memory.
        options.data_options.save_data_on_device = True
    return options


def _assign(target: Any, values: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(target)}
    for name, value in values.items():
        if name not in known:
            raise OptionsError(
                f"ptychi_baseline.{where}: unknown option {name!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        current = getattr(target, name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            _assign(current, value, f"{where}.{name}")
            continue
        try:
            setattr(target, name, value)
        except (ValueError, TypeError) as error:
            raise OptionsError(
                f"ptychi_baseline.{where}.{name}: pty-chi refuses {value!r}: {error}"
            ) from None


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda:N`` as given."""
    import torch  # noqa: PLC0415 - see the module docstring

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        _warn_cpu_fallback()
        return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"ptychi_baseline.device is {requested!r} but torch sees no CUDA device"
            )
        return requested
    raise OptionsError(
        f"ptychi_baseline.device must be auto, cpu, cuda or cuda:N, got {requested!r}"
    )


@functools.cache
def _warn_cpu_fallback() -> None:
    # INFO: every run on a CPU machine says so; the closing summary shows the device.
    logger.info("device auto: torch sees no CUDA device, reconstructing on the CPU")


def to_ptychi_inputs(
    diffraction: np.ndarray,
    probe: np.ndarray,
    object_guess: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    intensity_scale: float,
    object_init: str,
) -> PtychiInputs:
    """Convert DATA-001 arrays to what pty-chi expects.

    DATA-001 stores centred amplitudes sqrt(counts) / intensity_scale; pty-chi wants
    intensities (photon counts, so the Gaussian noise model's std of 0.5 in amplitude
    holds) with the DC term in the corner: the shift pty-chi's ``fft_shift=True`` would
    make, done here on the one copy (``build_options`` sets ``fft_shift=False``).
    DATA-001 positions are probe centres in object pixels with footprint
    ``[y - N/2, y + N/2)``; pty-chi's are relative to the object's centre pixel
    ``round(H/2) - 0.5`` with footprint ``[p - (N-1)/2, ...]``, so the same object grid
    gives ``p = y - round(H/2)``.
    """
    # pty-chi wants the DC term in the corner. Shifting here makes the one float32 copy
    # of the stack (scaled and squared in place); given that as a tensor with
    # fft_shift=False, pty-chi makes none of its own (it would copy it, then roll twice).
    counts = np.fft.fftshift(diffraction, axes=(-2, -1)).astype(np.float32, copy=False)
    counts *= np.float32(intensity_scale)
    np.square(counts, out=counts)
    height, width = object_guess.shape
    if object_init == "flat":
        start = np.ones((1, height, width), dtype=np.complex64)
    elif object_init == "ground_truth":
        start = object_guess.astype(np.complex64)[None]
    else:
        raise OptionsError(
            f"ptychi_baseline.object_init must be flat or ground_truth, "
            f"got {object_init!r}"
        )
    return PtychiInputs(
        intensities=counts,
        object_init=start,
        probe_init=probe.astype(np.complex64)[None, None],
        position_x_px=np.asarray(xcoords, dtype=np.float64) - np.round(width / 2),
        position_y_px=np.asarray(ycoords, dtype=np.float64) - np.round(height / 2),
    )


def from_ptychi_positions(
    position_x_px: np.ndarray, position_y_px: np.ndarray, object_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """pty-chi positions back to DATA-001 object-pixel coordinates."""
    height, width = object_shape
    return position_x_px + np.round(width / 2), position_y_px + np.round(height / 2)


def run_lsqml(
    inputs: PtychiInputs,
    options: Any,
    device: str,
    on_epoch: Callable[[int, float], None] | None = None,
    cpu_threads: int | None = None,
) -> LSQMLResult:
    """Run LSQML for ``options``' epochs; torch's process-wide state is left as found."""
    import torch  # noqa: PLC0415 - see the module docstring
    from ptychi.api.task import PtychographyTask

    with _isolated_torch_state(device, cpu_threads):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        task = PtychographyTask(
            options,
            diffraction_data=torch.from_numpy(inputs.intensities),
            object_data=inputs.object_init,
            probe_data=inputs.probe_init,
            probe_position_x_px=inputs.position_x_px,
            probe_position_y_px=inputs.position_y_px,
        )
        with task:
            _run_epochs(task, options.reconstructor_options.num_epochs, on_epoch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
            peak = (
                torch.cuda.max_memory_allocated() / 2**20
                if device.startswith("cuda")
                else None
            )
            return LSQMLResult(
                object=task.get_data_to_cpu("object", as_numpy=True)[0],
                probe=task.get_data_to_cpu("probe", as_numpy=True),
                position_x_px=task.get_probe_positions_x(as_numpy=True),
                position_y_px=task.get_probe_positions_y(as_numpy=True),
                loss=task.reconstructor.loss_tracker.table["loss"].to_numpy(
                    dtype=np.float64
                ),
                device=str(torch.get_default_device()),
                wall_time_s=wall,
                peak_gpu_memory_mb=peak,
            )


def _run_epochs(
    task: Any, num_epochs: int, on_epoch: Callable[[int, float], None] | None
) -> None:
    if on_epoch is None:
        task.run()
        return
    table = task.reconstructor.loss_tracker.table
    for epoch in range(num_epochs):
        task.run(n_epochs=1)
        on_epoch(epoch, float(table["loss"].iloc[-1]))


@contextlib.contextmanager
def _isolated_torch_state(device: str, cpu_threads: int | None) -> Iterator[None]:
    """Undo what building a pty-chi task does to the process.

    A task sets torch's default device and dtype, seeds torch/numpy/random globally and
    may install a root log handler; the next job (or the caller) must not inherit them.
    """
    import torch  # noqa: PLC0415 - see the module docstring

    root = logging.getLogger()
    saved = (
        torch.get_default_device(),
        torch.get_default_dtype(),
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
        list(root.handlers),
        root.level,
        torch.get_num_threads(),
    )
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    previous_cuda = torch.cuda.current_device() if torch.cuda.is_initialized() else None
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    # With these set (torchrun, some schedulers) pty-chi starts an NCCL process group.
    launcher = {
        name: os.environ.pop(name) for name in LAUNCHER_ENV if name in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(launcher)
        torch.set_default_device(saved[0])
        torch.set_default_dtype(saved[1])
        torch.set_rng_state(saved[2])
        np.random.set_state(saved[3])
        random.setstate(saved[4])
        root.handlers[:] = saved[5]
        root.setLevel(saved[6])
        torch.set_num_threads(saved[7])
        if previous_cuda is not None:
            torch.cuda.set_device(previous_cuda)
