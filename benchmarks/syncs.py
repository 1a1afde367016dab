"""Host-device synchronisations per LSQML batch: pty-chi's per-pattern loader vs batched.

One synthetic LSQML job (a random object, a Gaussian probe, positions on a jittered
grid, patterns |FFT(probe * patch)|² converted by ``task.to_ptychi_inputs``), with the
baseline's options through ``engines.build_options`` (batch 96, Gaussian noise, seed 0,
object and probe refined, float32, ``fft_shift=False``), for each setting: the patterns
on the host or on the device (``save_data_on_device``; on a CPU both are the CPU, so
only the host rows run), each through pty-chi's loader (one ``__getitem__`` per pattern)
or the batched one (``ptychi_baseline.loader.batched``: one ``__getitems__`` per batch).

Table 1 counts, with ``torch.profiler`` (CPU activity), the operators that are a
host-device synchronisation or transfer when their tensors are on a GPU, per batch and
per epoch, split by where they run: ``load`` (iterating the DataLoader: sampler,
``__getitem__``, collate), ``prepare`` (``prepare_batch_data``: indices to the host,
patterns to the device), ``update`` (``run_minibatch`` and the update hooks) and
``epoch`` (the rest: epoch hooks, the loss). Table 2 (every row timed; the sync counts
with ``--device cuda`` only) counts the synchronisations CUDA actually made
(``torch.cuda.set_sync_debug_mode("warn")``, one warning each, by phase and by the line
of pty-chi or torch that made it) and times an epoch of LSQML and an epoch of the loader
with ``prepare_batch_data`` alone. Rows are printed as they are measured.

Usage::

    python benchmarks/syncs.py [--device cpu|cuda] [--patterns 1024] [--size 64]
        [--batch 96] [--epochs 2] [--timed-epochs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from _common import add_threads_option, apply_threads, machine

OPS = (
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::copy_",
    "aten::_to_copy",
    "aten::to",
    "aten::index",
    "aten::select",
)
PHASES = ("load", "prepare", "update", "epoch")
SYNC_MESSAGE = "synchronizing CUDA operation"
# Python's warnings and torch's wrappers, between pty-chi's line and the warning
PLUMBING = (
    "/warnings.py",
    "torch/utils/_device.py",
    "torch/_tensor.py",
    "torch/overrides.py",
    "torch/_compile.py",
    "torch/_dynamo/eval_frame.py",
)


@dataclass(frozen=True)
class Setting:
    """Where the patterns live, and which loader reads them."""

    on_device: bool
    batched: bool

    @property
    def name(self) -> str:
        """``save_data_on_device=..., per pattern|batched``."""
        loader = "batched" if self.batched else "per pattern"
        return f"save_data_on_device={self.on_device}, {loader}"


def settings(device: str) -> list[Setting]:
    """Host and device patterns on a GPU; on a CPU the host is the device."""
    places = (False, True) if device.startswith("cuda") else (False,)
    return [Setting(place, batch) for place in places for batch in (False, True)]


def synthetic_inputs(patterns: int, size: int, seed: int = 0) -> Any:
    """A random object scanned on a jittered square grid, in pty-chi's conventions."""
    from fly64_recon.pipelines.ptychi_baseline import task

    rng = np.random.default_rng(seed)
    side, step = math.isqrt(patterns - 1) + 1, max(size // 8, 1)
    extent = (side - 1) * step + size + 4
    obj = rng.uniform(0.5, 1, (extent, extent)) * np.exp(
        1j * rng.uniform(-1, 1, (extent, extent))
    )
    axis = np.arange(size) - size / 2
    probe = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (size / 4) ** 2)
    grid = np.arange(side) * step + size // 2 + 2
    ys, xs = (g.ravel()[:patterns] for g in np.meshgrid(grid, grid, indexing="ij"))
    ys, xs = ys + rng.integers(-1, 2, ys.size), xs + rng.integers(-1, 2, xs.size)
    half = size // 2
    patches = np.stack(
        [
            obj[y - half : y + half, x - half : x + half]
            for y, x in zip(ys, xs, strict=True)
        ]
    )
    # DATA-001 stores centred amplitudes; to_ptychi_inputs squares and un-centres them.
    amplitudes = np.abs(np.fft.fftshift(np.fft.fft2(probe * patches), axes=(-2, -1)))
    return task.to_ptychi_inputs(
        amplitudes.astype(np.float32), probe, obj, xs, ys, 1.0, "flat"
    )


def new_task(inputs: Any, args: argparse.Namespace, setting: Setting) -> Any:
    """The baseline's LSQML task, built as ``task.run_engine`` builds it."""
    from ptychi.api.task import PtychographyTask

    from fly64_recon.pipelines.ptychi_baseline import engines, loader, task

    params = {
        "reconstructor_options": {
            "num_epochs": args.epochs,
            "batch_size": args.batch,
            "noise_model": "gaussian",
            "random_seed": 0,
        },
        "object_options": {"optimizable": True},
        "probe_options": {"optimizable": True},
        "probe_position_options": {"optimizable": False},
        "data_options": {"save_data_on_device": setting.on_device},
    }
    options = engines.build_options(engines.ENGINES["LSQML"], params, args.device)
    task = PtychographyTask(options, **task.task_data(inputs))
    return loader.batched(task) if setting.batched else task


class Phases:
    """Which part of the epoch runs now, as a profiler range and for the sync warnings."""

    def __init__(self) -> None:
        self.current = "epoch"

    @contextlib.contextmanager
    def enter(self, phase: str) -> Iterator[None]:
        """Run the block as ``phase`` (a ``syncs:PHASE`` range in the profile)."""
        import torch

        outer, self.current = self.current, phase
        try:
            with torch.profiler.record_function(f"syncs:{phase}"):
                yield
        finally:
            self.current = outer

    def wrap(self, function: Any, phase: str) -> Any:
        """``function`` run as ``phase``."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.enter(phase):
                return function(*args, **kwargs)

        return wrapped


class PhasedLoader:
    """The task's loader, each ``iter`` and ``next`` run as the ``load`` phase."""

    def __init__(self, loader: Any, phases: Phases) -> None:
        self.loader, self.phases = loader, phases

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        with self.phases.enter("load"):
            batches = iter(self.loader)
        while True:
            with self.phases.enter("load"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


def instrument(task: Any) -> Phases:
    """Mark the task's loader, batch preparation and updates as phases."""
    phases, reconstructor = Phases(), task.reconstructor
    reconstructor.dataloader = PhasedLoader(reconstructor.dataloader, phases)
    reconstructor.prepare_batch_data = phases.wrap(
        reconstructor.prepare_batch_data, "prepare"
    )
    for hook in ("run_pre_update_hooks", "run_minibatch", "run_post_update_hooks"):
        setattr(
            reconstructor, hook, phases.wrap(getattr(reconstructor, hook), "update")
        )
    return phases


@contextlib.contextmanager
def counted_reads() -> Iterator[collections.Counter]:
    """How often the dataset's ``__getitem__`` and the batched ``__getitems__`` run."""
    from ptychi.io_handles import PtychographyDataset

    from fly64_recon.pipelines.ptychi_baseline.loader import BatchedDataset

    calls: collections.Counter = collections.Counter()

    def counting(cls: type, name: str) -> Any:
        original = getattr(cls, name)

        def method(self: Any, *args: Any) -> Any:
            calls[name] += 1
            return original(self, *args)

        return mock.patch.object(cls, name, method)

    with (
        counting(PtychographyDataset, "__getitem__"),
        counting(BatchedDataset, "__getitems__"),
    ):
        yield calls


def phase_counts(prof: Any) -> collections.Counter:
    """Operator counts by (phase, op): each in the ``syncs:`` range it started in."""
    # Raw events: prof.events() builds a tree for seconds per epoch. Phases never nest.
    ranges, ops = [], []
    for event in prof.profiler.kineto_results.events():
        name, start = event.name(), event.start_ns()
        if name.startswith("syncs:"):
            ranges.append((start, start + event.duration_ns(), name[len("syncs:") :]))
        elif name in OPS:
            ops.append((start, name))
    ranges.sort()
    starts = [start for start, _, _ in ranges]
    counts: collections.Counter = collections.Counter()
    for start, name in ops:
        at = bisect.bisect_right(starts, start) - 1
        inside = at >= 0 and start <= ranges[at][1]
        counts[ranges[at][2] if inside else "epoch", name] += 1
    return counts


def profiled_counts(inputs: Any, args: argparse.Namespace, setting: Setting) -> tuple:
    """Operator counts, dataset reads and batches per epoch, after a warm-up epoch."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    task = new_task(inputs, args, setting)
    batches = len(task.reconstructor.dataloader)
    instrument(task)
    with task:
        task.run(n_epochs=1)  # fills pty-chi's process-wide caches (FFT grids...)
        with (
            counted_reads() as reads,
            profile(activities=[ProfilerActivity.CPU]) as prof,
        ):
            task.run(n_epochs=args.epochs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
    return phase_counts(prof), reads, batches


def counted_syncs(inputs: Any, args: argparse.Namespace, setting: Setting) -> tuple:
    """CUDA's syncs by phase and by line, and batches per epoch, after a warm-up epoch."""
    import torch

    task = new_task(inputs, args, setting)
    batches = len(task.reconstructor.dataloader)
    phases = instrument(task)
    by_phase: collections.Counter = collections.Counter()
    by_line: collections.Counter = collections.Counter()

    def record(message: Any, *_: Any) -> None:
        if SYNC_MESSAGE in str(message):
            by_phase[phases.current] += 1
            by_line[caller(sys._getframe(1))] += 1

    with task, warnings.catch_warnings():
        task.run(n_epochs=1)
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            task.run(n_epochs=args.epochs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return by_phase, by_line, batches


def caller(frame: Any) -> str:
    """``folder/file.py:line`` of the code that made the call, past ``PLUMBING``."""
    while frame is not None and frame.f_code.co_filename.endswith(PLUMBING):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = Path(frame.f_code.co_filename)
    return f"{path.parent.name}/{path.name}:{frame.f_lineno}"


def timed_epochs(inputs: Any, args: argparse.Namespace, setting: Setting) -> tuple:
    """Seconds per LSQML epoch, then per epoch of the loader + ``prepare_batch_data``."""
    import torch

    task = new_task(inputs, args, setting)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    with task:
        task.run(n_epochs=1)
        sync()
        started = time.perf_counter()
        task.run(n_epochs=args.timed_epochs)
        sync()
        lsqml = (time.perf_counter() - started) / args.timed_epochs
        reconstructor, started = task.reconstructor, time.perf_counter()
        for _ in range(args.timed_epochs):
            for batch in reconstructor.dataloader:
                reconstructor.prepare_batch_data(batch)
        sync()
        loading = (time.perf_counter() - started) / args.timed_epochs
    return lsqml, loading


def per(count: float, epochs: int, batches: int) -> str:
    """``per batch / per epoch``."""
    return f"{count / (epochs * batches):.1f} / {count / epochs:.0f}"


def row(cells: list[Any]) -> None:
    """One Markdown table row, printed now."""
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


def header(title: str, columns: list[str]) -> None:
    """A Markdown table's title and header, printed now."""
    print(f"\n{title}\n", flush=True)
    row(columns)
    print("|" + "|".join("---" for _ in columns) + "|", flush=True)


def operator_table(inputs: Any, args: argparse.Namespace) -> None:
    """Table 1: profiled operators per batch / per epoch, by phase."""
    header(
        f"Operators per batch / per epoch ({args.patterns} patterns of {args.size}², "
        f"batch {args.batch}, {args.epochs} epochs after a warm-up one, {args.device})",
        [
            "setting",
            "where",
            "`__getitem__` / `__getitems__`",
            *[f"`{op}`" for op in OPS],
        ],
    )
    for setting in settings(args.device):
        counts, reads, batches = profiled_counts(inputs, args, setting)
        for phase in PHASES:
            read = reads["__getitem__"] + reads["__getitems__"]
            calls = per(read, args.epochs, batches) if phase == "load" else ""
            cells = [per(counts[phase, op], args.epochs, batches) for op in OPS]
            row([setting.name, phase, calls, *cells])


def sync_table(inputs: Any, args: argparse.Namespace) -> None:
    """Table 2: CUDA's synchronisations (GPU only) and seconds per epoch."""
    cuda = args.device.startswith("cuda")
    header(
        f"Synchronisations per batch / per epoch ({args.epochs} epochs after a warm-up "
        f"one) and seconds per epoch ({args.timed_epochs} timed, {args.device})",
        ["setting", *[f"syncs: {p}" for p in PHASES], "syncs per epoch: where (top 4)"]
        + ["s / LSQML epoch", "s / epoch of load + prepare"],
    )
    for setting in settings(args.device):
        syncs = ["-"] * (len(PHASES) + 1)
        if cuda:
            by_phase, by_line, batches = counted_syncs(inputs, args, setting)
            syncs = [per(by_phase[p], args.epochs, batches) for p in PHASES]
            top = by_line.most_common(4)
            syncs.append("; ".join(f"{line} ×{n / args.epochs:.0f}" for line, n in top))
        lsqml, loading = timed_epochs(inputs, args, setting)
        row([setting.name, *syncs, f"{lsqml:.3f}", f"{loading:.4f}"])


def main() -> None:
    """Measure every setting, printing each row as it is measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--patterns", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64, help="pattern side (pixels)")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs profiled and counted"
    )
    parser.add_argument("--timed-epochs", type=int, default=5, help="epochs timed")
    add_threads_option(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    print(machine(), flush=True)
    inputs = synthetic_inputs(args.patterns, args.size)
    operator_table(inputs, args)
    sync_table(inputs, args)


if __name__ == "__main__":
    main()
