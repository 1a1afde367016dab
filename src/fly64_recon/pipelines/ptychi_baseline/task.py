"""One pty-chi task: DATA-001 arrays in pty-chi's conventions, the task built and run
in this process with torch's process-wide state left as found, the result on the CPU.

``ptychi`` and ``torch`` cost seconds to import, and every ``kedro`` command imports
this module (``register_pipelines``), so they are imported inside the functions that
need them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fly64_recon.pipelines.ptychi_baseline.engines import OptionsError
from fly64_recon.pipelines.ptychi_baseline.loader import batched

logger = logging.getLogger(__name__)

# What pty-chi's MultiprocessMixin.detect_launcher reads (ptychi/parallel.py): any of
# the first three alone means torchrun, the last three together torch.distributed's
# launch; either way it starts an NCCL process group, which one job must not.
LAUNCHER_ENV = (
    "GROUP_RANK",
    "ROLE_RANK",
    "LOCAL_WORLD_SIZE",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
)


# After each epoch: the loss so far and a getter of the object; True stops the run.
EpochCallback = Callable[[np.ndarray, Callable[[], np.ndarray]], bool]


@dataclass(frozen=True)
class PtychiInputs:
    """Arrays in pty-chi's conventions: intensities, (1, H, W) object, 4-D probe."""

    intensities: np.ndarray
    object_init: np.ndarray
    probe_init: np.ndarray
    position_x_px: np.ndarray
    position_y_px: np.ndarray
    valid_pixel_mask: np.ndarray | None = None  # DC in the corner, as the intensities


@dataclass(frozen=True)
class EngineResult:
    """What one engine run gives back, on the CPU."""

    object: np.ndarray
    probe: np.ndarray
    position_x_px: np.ndarray
    position_y_px: np.ndarray
    loss: np.ndarray
    device: str
    wall_time_s: float
    peak_gpu_memory_mb: float | None
    peak_gpu_memory_reserved_mb: float | None
    # The one-off set-up this process paid before the job (CUDA context, cuFFT plans,
    # Triton kernels), kept out of ``wall_time_s``; None when it had been paid.
    warmup_s: float | None


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
    bad_pixels: np.ndarray | None = None,
) -> PtychiInputs:
    """Convert DATA-001 arrays to what pty-chi expects.

    DATA-001 stores centred amplitudes sqrt(counts) / intensity_scale; pty-chi wants
    intensities (photon counts, so the Gaussian noise model's std of 0.5 in amplitude
    holds) with the DC term in the corner: the shift pty-chi's ``fft_shift=True`` would
    make, done here on the one copy (``build_options`` sets ``fft_shift=False``).
    DATA-001 positions are probe centres in object pixels with footprint
    ``[y - N/2, y + N/2)``; pty-chi's are relative to the object's centre pixel
    ``round(H/2) - 0.5`` with footprint ``[p - (N-1)/2, ...]``, so the same object grid
    gives ``p = y - round(H/2)``. Bad pixels (centred, as the patterns) become
    pty-chi's valid-pixel mask, shifted as the intensities are.
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
        valid_pixel_mask=None
        if bad_pixels is None
        else np.fft.fftshift(~np.asarray(bad_pixels, dtype=bool)),
    )


def from_ptychi_positions(
    position_x_px: np.ndarray, position_y_px: np.ndarray, object_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """pty-chi positions back to DATA-001 object-pixel coordinates."""
    height, width = object_shape
    return position_x_px + np.round(width / 2), position_y_px + np.round(height / 2)


def probe_modes(probe: np.ndarray, modes: int) -> np.ndarray:
    """The (1, modes, N, N) starting probe: the given one as mode 0, and ``modes - 1``
    orthogonal Hermite-Gaussian modes of 2 % of its power each (pty-chi's
    ``orthogonalize_initial_probe``), the total power kept."""
    start = np.repeat(probe.astype(np.complex64)[None, None], modes, axis=1)
    if modes == 1:
        return start
    import torch  # noqa: PLC0415 - see the module docstring
    from ptychi.utils import orthogonalize_initial_probe  # noqa: PLC0415

    with torch.device("cpu"):
        return orthogonalize_initial_probe(torch.from_numpy(start)).numpy()


def rescaled_probe(
    probe: np.ndarray, intensities: np.ndarray
) -> tuple[np.ndarray, float]:
    """The probe scaled to the patterns' mean total intensity (pty-chi's
    ``rescale_probe``), and the factor its power was multiplied by."""
    import torch  # noqa: PLC0415 - see the module docstring
    from ptychi.utils import rescale_probe  # noqa: PLC0415

    with torch.device("cpu"):
        scaled = np.asarray(rescale_probe(probe, intensities), dtype=np.complex64)
    power = float(np.sum(np.abs(scaled) ** 2) / np.sum(np.abs(probe) ** 2))
    return scaled, power


def starting_probe(
    inputs: PtychiInputs, modes: int, rescale: bool
) -> tuple[PtychiInputs, float | None]:
    """``inputs`` with ``modes`` probe modes, scaled to the patterns if ``rescale``;
    and the factor the probe's power was multiplied by (None: not rescaled)."""
    probe = probe_modes(inputs.probe_init[0, 0], modes)
    power = None
    if rescale:
        probe, power = rescaled_probe(probe, inputs.intensities)
    return dataclasses.replace(inputs, probe_init=probe), power


def run_engine(
    inputs: PtychiInputs,
    options: Any,
    device: str,
    on_epoch: EpochCallback | None = None,
    cpu_threads: int | None = None,
) -> EngineResult:
    """Run the engine of ``options`` for its epochs, or until ``on_epoch`` (given the
    loss per epoch so far) says stop; torch's process-wide state is left as found.

    The task's loader gathers each batch with one index (``loader.batched``: the same
    batches, bit for bit). On a GPU the process's one-off set-up for these shapes runs
    first and is timed apart (:func:`warm_up`); the peak memory is the job's own.
    """
    import torch  # noqa: PLC0415 - see the module docstring
    from ptychi.api.task import PtychographyTask

    on_gpu = device.startswith("cuda")
    with _isolated_torch_state(device, cpu_threads):
        warmup = warm_up(inputs, options) if on_gpu else None
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        task = batched(PtychographyTask(options, **task_data(inputs)))
        with task:
            _run_epochs(task, options.reconstructor_options.num_epochs, on_epoch)
            if on_gpu:
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
            return EngineResult(
                object=task.get_data_to_cpu("object", as_numpy=True)[0],
                probe=task.get_data_to_cpu("probe", as_numpy=True),
                position_x_px=task.get_probe_positions_x(as_numpy=True),
                position_y_px=task.get_probe_positions_y(as_numpy=True),
                loss=task.reconstructor.loss_tracker.table["loss"].to_numpy(
                    dtype=np.float64
                ),
                device=str(torch.get_default_device()),
                wall_time_s=wall,
                peak_gpu_memory_mb=_mib(torch.cuda.max_memory_allocated, on_gpu),
                peak_gpu_memory_reserved_mb=_mib(
                    torch.cuda.max_memory_reserved, on_gpu
                ),
                warmup_s=warmup,
            )


def task_data(inputs: PtychiInputs) -> dict[str, Any]:
    """``PtychographyTask``'s data arguments; the patterns as a tensor, not copied."""
    import torch  # noqa: PLC0415 - see the module docstring

    return {
        "diffraction_data": torch.from_numpy(inputs.intensities),
        "object_data": inputs.object_init,
        "probe_data": inputs.probe_init,
        "probe_position_x_px": inputs.position_x_px,
        "probe_position_y_px": inputs.position_y_px,
        "valid_pixel_mask": inputs.valid_pixel_mask,
    }


def _mib(counter: Callable[[], int], on_gpu: bool) -> float | None:
    return counter() / 2**20 if on_gpu else None


# The shapes this process has run with: (device, options class, N, modes, batch).
_WARMED: set[tuple[Any, ...]] = set()


def warm_up(inputs: PtychiInputs, options: Any) -> float | None:
    """The seconds of two epochs on one batch of the job's own patterns, the first time
    this process meets these shapes on this device (None after that); two, because
    LSQML's first epoch may only rescale the probe.

    A process pays its CUDA context, cuFFT plans and Triton kernels once, at its first
    job: this takes them out of that job's ``wall_time_s``, so the jobs of a run compare.
    """
    from ptychi.api.task import PtychographyTask  # noqa: PLC0415

    reconstructor = options.reconstructor_options
    key = (
        reconstructor.default_device,
        type(options).__name__,
        inputs.probe_init.shape,
        reconstructor.batch_size,
    )
    if key in _WARMED:
        return None
    _WARMED.add(key)
    first = slice(0, max(1, min(reconstructor.batch_size, len(inputs.intensities))))
    batch = dataclasses.replace(
        inputs,
        intensities=inputs.intensities[first],
        position_x_px=inputs.position_x_px[first],
        position_y_px=inputs.position_y_px[first],
    )
    once = copy.deepcopy(options)
    once.reconstructor_options.num_epochs = 2
    started = time.perf_counter()
    with batched(PtychographyTask(once, **task_data(batch))) as task:
        task.run()
    _synchronize()
    return time.perf_counter() - started


def _synchronize() -> None:
    import torch  # noqa: PLC0415 - see the module docstring

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _run_epochs(task: Any, num_epochs: int, on_epoch: EpochCallback | None) -> None:
    """Up to ``num_epochs``; ``on_epoch`` sees the loss so far (and, when it asks, the
    object, copied to the CPU) and may stop the run."""
    if on_epoch is None:
        task.run()
        return

    def current_object() -> np.ndarray:
        return task.get_data_to_cpu("object", as_numpy=True)[0]

    for _ in range(num_epochs):
        task.run(n_epochs=1)
        loss = task.reconstructor.loss_tracker.table["loss"].to_numpy(np.float64)
        if on_epoch(loss, current_object):
            return


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
        if torch.cuda.is_initialized():
            # What this job's tensors held goes back to the GPU, for the other
            # workers sharing it (torch's caching allocator keeps it otherwise).
            torch.cuda.empty_cache()
        if previous_cuda is not None:
            torch.cuda.set_device(previous_cuda)
