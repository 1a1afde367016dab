"""One LSQML job's memory against the runner's estimate (``runner/capacity.py``).

For each shape (patterns n, pattern side N, batch b, object side H) a fresh process
builds the project's LSQML task on synthetic patterns and runs 3 epochs. On the CPU it
reports the rise of the process's peak resident memory over the job (Linux's VmHWM,
reset before the job; the patterns are given without a copy, as the pipeline gives
them); on a GPU, the job's peak allocated and reserved memory as its record has them
(``task.run_engine``) and what ``nvidia-smi`` says the process holds after the job
(its CUDA context: the job's memory is given back by then). Beside each: the estimate,
with and without the CUDA context.

Usage::

    python benchmarks/job_memory.py [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import add_threads_option, apply_threads, machine, print_table

# (patterns, N, batch, object side): the embedded study's job, then one factor at a
# time, then a full-scale job's shape.
SHAPES = (
    (1024, 64, 96, 512),
    (1024, 64, 192, 512),
    (2048, 64, 96, 512),
    (1024, 64, 96, 1024),
    (1024, 128, 48, 512),
    (1024, 128, 96, 512),
    (5152, 128, 96, 464),
)


def measure(patterns: int, size: int, batch: int, side: int, device: str) -> dict:
    """In this (fresh) process: the job's memory, as the module docstring says."""
    import numpy as np

    from fly64_recon.pipelines.ptychi_baseline import engines, task

    rng = np.random.default_rng(0)
    axis = np.arange(size) - size / 2
    probe = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * (size / 6) ** 2))
    span = side - size - 4
    inputs = task.PtychiInputs(
        intensities=rng.poisson(10, (patterns, size, size)).astype(np.float32),
        object_init=np.ones((1, side, side), np.complex64),
        probe_init=probe.astype(np.complex64)[None, None],
        position_x_px=rng.uniform(-span / 2, span / 2, patterns),
        position_y_px=rng.uniform(-span / 2, span / 2, patterns),
    )
    options = engines.build_options(
        engines.ENGINES["LSQML"],
        {
            "reconstructor_options": {
                "num_epochs": 3,
                "batch_size": batch,
                "noise_model": "gaussian",
            },
            "object_options": {"optimizable": True},
            "probe_options": {"optimizable": True},
        },
        device,
    )
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here
    before = _status_mib("VmRSS:")
    result = task.run_engine(inputs, options, device)
    measured = {"rss_rise_mib": _status_mib("VmHWM:") - before}
    if device == "cuda":
        measured |= {
            "allocated_mib": result.peak_gpu_memory_mb,
            "reserved_mib": result.peak_gpu_memory_reserved_mb,
            # After the job its memory is back with the GPU: what stays is the context.
            "context_mib": _process_gpu_mib(),
        }
    return measured


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _process_gpu_mib() -> float | None:
    listing = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory"]
        + ["--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout
    for line in listing.splitlines():
        pid, used = (cell.strip() for cell in line.split(","))
        if pid == str(os.getpid()):
            return float(used)
    return None


def estimate(patterns: int, size: int, batch: int, side: int) -> dict[str, float]:
    """The runner's estimate (patterns on the host, the default), the context apart."""
    from fly64_recon.runner import capacity

    shape = capacity.JobShape(patterns, size, side * side)
    job = capacity.job_mib(shape, capacity.EngineMemory(batch, 1, False))
    return {"buffers": job - capacity.CUDA_CONTEXT_MIB, "job": job}


def main() -> None:
    """Every shape in a fresh process, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shape", help=argparse.SUPPRESS)  # a worker's one shape
    add_threads_option(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.shape:
        shape = [int(v) for v in args.shape.split(",")]
        print(json.dumps(measure(*shape, args.device)))
        return
    print(machine())
    rows = []
    for shape in SHAPES:
        done = subprocess.run(
            [sys.executable, __file__, "--device", args.device]
            + ["--shape", ",".join(map(str, shape))],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        guess = estimate(*shape)
        rows.append(
            [*shape, measured["rss_rise_mib"], guess["buffers"]]
            + [measured.get(k) for k in ("allocated_mib", "reserved_mib")]
            + [measured.get("context_mib"), guess["job"]]
        )
        print(f"measured {shape}: {measured}", flush=True)
    print_table(
        f"One LSQML job's memory (MiB), 3 epochs, {args.device}",
        [
            "patterns",
            "N",
            "batch",
            "object side",
            "peak RSS rise",
            "estimate without the CUDA context",
            "GPU allocated",
            "GPU reserved",
            "GPU process after the job (context)",
            "estimate with it",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
