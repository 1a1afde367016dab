"""The machine's GPUs as the runners and the jobs see them, without paying for torch
where there is no GPU driver, and which errors leave a GPU process unusable.

Like ``study.py`` and ``record.py`` this module imports nothing of the project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Where a GPU driver shows itself (NVIDIA; AMD's kfd for ROCm builds of torch).
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")
NVIDIA_SMI_TIMEOUT_S = 20
# Words of a CUDA error after which the process's CUDA context is lost: every later
# CUDA call in it fails (sticky errors), so the worker must be replaced. Out of memory
# is not one of them: the caching allocator recovers.
STICKY_CUDA_ERRORS = (
    "CUDA error",
    "CUBLAS_STATUS",
    "CUFFT_",
    "cuDNN error",
    "device-side assert",
    "an illegal memory access",
    "unspecified launch failure",
    "misaligned address",
)


def gpu_driver() -> bool:
    """Whether a GPU driver is loaded on this machine (no torch import)."""
    return any(Path(p).exists() for p in GPU_DRIVER_PATHS)


def visible_gpus() -> list[str]:
    """This process's GPUs, as ``CUDA_VISIBLE_DEVICES`` entries for one worker each.

    Without a GPU driver on the machine the answer is none, without importing torch
    (seconds) in a run that may never reconstruct.
    """
    if not gpu_driver():
        return []
    import torch  # noqa: PLC0415 - only where a GPU may be

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [gpu.strip() for gpu in listed.split(",") if gpu.strip()][:count]


def device_kind(requested: str) -> str:
    """``cpu`` or ``cuda``: the kind of device a job asking for ``requested`` (auto,
    cpu, cuda, cuda:N) runs on here. Results differ between kinds (pty-chi's loader
    draws its batches from a generator on the device), not between two GPUs."""
    if requested == "cpu" or (requested == "auto" and not gpu_driver()):
        return "cpu"
    if requested == "auto":
        import torch  # noqa: PLC0415 - only where a GPU may be

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda"


def free_gpu_memory_mib(gpus: list[str]) -> dict[str, float]:
    """Free memory of each of ``gpus`` (``CUDA_VISIBLE_DEVICES`` entries: indices or
    UUIDs) as ``nvidia-smi`` reports it; empty when it cannot tell.

    ``nvidia-smi``, not torch: asking torch would create a CUDA context (hundreds of
    MiB of GPU memory) in the ``kedro run`` process for the whole run.
    """
    if not gpus or shutil.which("nvidia-smi") is None:
        return {}
    try:
        listing = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,uuid,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return _free_by_gpu(listing, gpus)


def _free_by_gpu(listing: str, gpus: list[str]) -> dict[str, float]:
    free: dict[str, float] = {}
    for line in listing.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 3:
            continue
        try:
            mib = float(cells[2])
        except ValueError:
            continue
        free[cells[0]] = free[cells[1]] = mib
    return {gpu: free[gpu] for gpu in gpus if gpu in free}


def is_sticky_cuda_error(error: BaseException) -> bool:
    """Whether ``error`` leaves this process's CUDA context unusable (not out of
    memory, from which torch recovers)."""
    text = f"{type(error).__name__}: {error}"
    if "out of memory" in text or type(error).__name__ == "OutOfMemoryError":
        return False
    return type(error).__name__ == "AcceleratorError" or any(
        words in text for words in STICKY_CUDA_ERRORS
    )


# The sticky CUDA error this process has met, if any: set by the job that met it,
# read by the runner, which then replaces the worker (``runner/worker.py``).
_LOST: dict[str, str] = {}


def note_if_lost(error: BaseException) -> bool:
    """Remember ``error`` if it leaves this process's GPU unusable; whether it does."""
    if not is_sticky_cuda_error(error):
        return False
    _LOST.setdefault("reason", f"{type(error).__name__}: {error}")
    return True


def lost_context() -> str | None:
    """Why this process can no longer use its GPU (None: it can).

    A sticky error noted by a job, or one that a synchronisation of the device raises
    now (a fault no job caught).
    """
    if "reason" not in _LOST and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_initialized():
            try:
                torch.cuda.synchronize()
            except Exception as error:  # noqa: BLE001 - any failure here is the answer
                _LOST.setdefault("reason", f"{type(error).__name__}: {error}")
    return _LOST.get("reason")
