"""One LSQML job as a bare pty-chi script: no Kedro and no project code.

This is the yardstick the pipeline is measured against, and the per-job script of the
subprocess-per-job orchestrator (``study_vs_subprocess.py``). It mirrors
``conf/base/parameters_ptychi_baseline.yml`` (batch 96, Gaussian noise, seed 0, object
and probe refined, positions fixed, flat object start, float32, ``fft_shift``) and the
DATA-001 -> pty-chi conversion of ``task.to_ptychi_inputs``.

Usage::

    python benchmarks/bare_job.py INPUT.npz OUTPUT.npz --epochs 4 [--device cpu]
        [--save-data-on-device auto|true|false] [--result timings.json]

On a GPU the patterns stay on the device, as the pipeline keeps them
(``--save-data-on-device auto``: true on cuda).

It writes the reconstruction (object, probe, positions, loss) to OUTPUT.npz and, with
``--result``, its timings as JSON: ``import_s`` (torch + pty-chi), ``load_s`` (np.load of
every array), ``convert_s``, ``reconstruction_s`` (task build + epochs, the span the
pipeline records as ``wall_time_s``, the first job's set-up on a GPU included), ``save_s``,
``job_s`` (load to save), ``job_cpu_s`` (CPU time of all threads over the same span),
``epochs``, ``final_loss``, ``peak_gpu_memory_mb`` and ``peak_gpu_memory_reserved_mb``
(on a GPU) and ``peak_rss_mib``.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402 - the import time of this script is measured
import json  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ptychi.api import Devices, Dtypes, LSQMLOptions  # noqa: E402
from ptychi.api.task import PtychographyTask  # noqa: E402

_IMPORTED = time.perf_counter()

BATCH_SIZE = 96


def load(path: Path) -> dict[str, np.ndarray]:
    """Every array of a DATA-001 file, as a plain script would read it."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def convert(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """DATA-001 amplitudes and object-pixel positions to pty-chi's conventions."""
    metadata = json.loads(str(arrays["_metadata"])) if "_metadata" in arrays else {}
    scale = np.float32(metadata.get("intensity_scale", 1.0))
    height, width = arrays["objectGuess"].shape
    return {
        "diffraction_data": np.square(arrays["diffraction"] * scale, dtype=np.float32),
        "object_data": np.ones((1, height, width), dtype=np.complex64),
        "probe_data": arrays["probeGuess"].astype(np.complex64)[None, None],
        "probe_position_x_px": arrays["xcoords"] - np.round(width / 2),
        "probe_position_y_px": arrays["ycoords"] - np.round(height / 2),
    }


def options(epochs: int, device: str, patterns_on_device: bool) -> LSQMLOptions:
    """The baseline's LSQML options, written out by hand."""
    opts = LSQMLOptions()
    rec = opts.reconstructor_options
    rec.num_epochs = epochs
    rec.batch_size = BATCH_SIZE
    rec.noise_model = "gaussian"
    rec.random_seed = 0
    rec.default_device = Devices.CPU if device == "cpu" else Devices.GPU
    rec.default_dtype = Dtypes.FLOAT32
    opts.object_options.optimizable = True
    opts.probe_options.optimizable = True
    opts.probe_position_options.optimizable = False
    opts.data_options.fft_shift = True
    opts.data_options.save_data_on_device = patterns_on_device
    return opts


def reconstruct(inputs: dict[str, Any], opts: LSQMLOptions) -> dict[str, np.ndarray]:
    """Build the task, run every epoch, bring the results to the CPU."""
    task = PtychographyTask(opts, **inputs)
    task.run()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return {
        "reconstructed_object": task.get_data_to_cpu("object", as_numpy=True)[0],
        "reconstructed_probe": task.get_data_to_cpu("probe", as_numpy=True),
        "xcoords": task.get_probe_positions_x(as_numpy=True),
        "ycoords": task.get_probe_positions_y(as_numpy=True),
        "loss": task.reconstructor.loss_tracker.table["loss"].to_numpy(),
    }


def run(
    input_path: Path, output_path: Path, epochs: int, device: str, on_device: bool
) -> dict:
    """The job, timed step by step."""
    cpu_started = time.process_time()
    marks = [time.perf_counter()]
    arrays = load(input_path)
    marks.append(time.perf_counter())
    inputs = convert(arrays)
    opts = options(epochs, device, on_device)
    marks.append(time.perf_counter())
    result = reconstruct(inputs, opts)
    marks.append(time.perf_counter())
    output_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output_path, **result)
    marks.append(time.perf_counter())
    steps = ("load_s", "convert_s", "reconstruction_s", "save_s")
    timings = {k: marks[i + 1] - marks[i] for i, k in enumerate(steps)}
    return {
        **timings,
        "job_s": marks[-1] - marks[0],
        "job_cpu_s": time.process_time() - cpu_started,
        "epochs": epochs,
        "final_loss": float(result["loss"][-1]),
        "peak_gpu_memory_mb": _gpu_mib(torch.cuda.max_memory_allocated),
        "peak_gpu_memory_reserved_mb": _gpu_mib(torch.cuda.max_memory_reserved),
    }


def _gpu_mib(counter) -> float | None:
    return counter() / 2**20 if torch.cuda.is_initialized() else None


def main() -> None:
    """Run one job from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--save-data-on-device", default="auto", choices=("auto", "true", "false")
    )
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    on_device = (
        args.device == "cuda"
        if args.save_data_on_device == "auto"
        else args.save_data_on_device == "true"
    )
    timings = run(args.input, args.output, args.epochs, args.device, on_device)
    timings["import_s"] = _IMPORTED - _STARTED
    timings["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.result:
        args.result.write_text(json.dumps(timings))


if __name__ == "__main__":
    main()
