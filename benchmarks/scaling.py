"""One job's wall time and peak memory versus number of positions and epochs.

Usage (from the project root)::

    python benchmarks/scaling.py [--namespace dose_1e4.baseline.test]
        [--positions 64 128 256 512] [--epochs 2 4 8] [--fixed-epochs 3]
        [--fixed-positions 128] [--device auto] [--repeats 3] [--input FILE.npz]

Each point is a fresh Python process that runs the job's ``validate_input`` and
``reconstruct`` nodes in-process (conf/base options; ``max_patterns`` picks a seeded
subset of positions, ``num_epochs`` the epochs), so its peak RSS is that job's. The
clock starts after the imports. ``--input`` points the job at another DATA-001 file
(e.g. a full-scale one, on a GPU). Points are interleaved over repeats; medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from _common import (
    add_study_options,
    input_path,
    median,
    peak_rss_mib,
    prepared_study,
    print_table,
    run_worker,
    worker_command,
)


def baseline_params(project: Path, positions: int, epochs: int, device: str) -> dict:
    """conf/base's ``ptychi_baseline`` with this point's positions, epochs, device."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from fly64_recon.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415

    loader = OmegaConfigLoader(
        conf_source=str(project / "conf"), env="local", **CONFIG_LOADER_ARGS
    )
    params: dict[str, Any] = dict(loader["parameters"]["ptychi_baseline"])
    lsqml = dict(params["lsqml"])
    lsqml["reconstructor_options"] = {
        **lsqml["reconstructor_options"],
        "num_epochs": epochs,
    }
    return {**params, "lsqml": lsqml, "max_patterns": positions, "device": device}


def worker(args: argparse.Namespace) -> None:
    """One point: validate + reconstruct in this (fresh) process."""
    import ptychi.api.task  # noqa: F401, PLC0415

    from fly64_recon.datasets import JobArtifacts, NPZSource  # noqa: PLC0415
    from fly64_recon.pipelines.ptychi_baseline import nodes  # noqa: PLC0415
    from fly64_recon.study import Job  # noqa: PLC0415

    params = baseline_params(
        args.project, args.positions[0], args.epochs[0], args.device
    )
    rss_imports = peak_rss_mib()
    started = time.perf_counter()
    job = Job.from_namespace(args.namespace)
    checked = nodes.validate_input(NPZSource(str(args.input)), params, job)
    artifacts = nodes.reconstruct(checked, JobArtifacts({}))
    job_s = time.perf_counter() - started
    record = artifacts.record
    if record["status"] != "succeeded":
        raise RuntimeError(f"{args.namespace}: {record['status']}: {record['reason']}")
    result = {
        "job_s": job_s,
        "reconstruction_s": record["wall_time_s"],
        "n_patterns": record["n_patterns"],
        "pattern_size": int(checked.arrays["diffraction"].shape[-1]),
        "device": record["device"],
        "peak_gpu_memory_mb": record["peak_gpu_memory_mb"],
        "rss_imports_mib": rss_imports,
        "peak_rss_mib": peak_rss_mib(),
    }
    args.result.write_text(json.dumps(result))


def points(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(positions, epochs): the positions sweep, then the epochs sweep."""
    sweep = [(n, args.fixed_epochs) for n in args.positions]
    sweep += [(args.fixed_positions, e) for e in args.epochs]
    return list(dict.fromkeys(sweep))


def sample(point: tuple[int, int], source: Path, run_dir: Path, args) -> dict:
    """One point in a fresh process."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    positions, epochs = point
    command = worker_command(
        "scaling.py",
        "--worker",
        f"--project={args.project}",
        f"--input={source}",
        f"--namespace={args.namespace}",
        f"--positions={positions}",
        f"--epochs={epochs}",
        f"--device={args.device}",
        f"--result={run_dir / 'result.json'}",
    )
    return run_worker(command, args.project, run_dir / "result.json", run_dir / "log")


def report(results: dict[tuple[int, int], list[dict]], args) -> None:
    """One row per point: medians of wall time and memory."""
    rows = []
    for (_, epochs), samples in results.items():
        first = samples[0]
        recon = median([s["reconstruction_s"] for s in samples])
        gpu = first["peak_gpu_memory_mb"]
        rows.append(
            [first["n_patterns"], epochs, median([s["job_s"] for s in samples])]
            + [recon, recon / epochs, 1000 * recon / epochs / first["n_patterns"]]
            + [f"{median([s['rss_imports_mib'] for s in samples]):.0f}"]
            + [f"{median([s['peak_rss_mib'] for s in samples]):.0f}"]
            + ["-" if gpu is None else f"{gpu:.0f}"]
        )
    first = next(iter(results.values()))[0]
    print_table(
        f"Scaling of one job ({args.namespace}, {first['pattern_size']}^2 patterns, "
        f"device {first['device']}, {args.repeats} repeats, medians)",
        ["positions", "epochs", "job s", "reconstruction s", "s/epoch"]
        + ["ms/epoch/position", "RSS after imports MiB", "peak RSS MiB"]
        + ["peak GPU MiB"],
        rows,
    )


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope of y over x (NaN for fewer than 2 x)."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return float("nan"), float("nan")
    mean_x, mean_y = sum(xs) / len(xs), sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - slope * mean_x, slope


def report_fits(results: dict[tuple[int, int], list[dict]], args) -> None:
    """Fixed cost and marginal cost per epoch and per position (medians, fitted)."""
    recon = {p: median([s["reconstruction_s"] for s in v]) for p, v in results.items()}
    by_epochs = [(e, t) for (n, e), t in recon.items() if n == args.fixed_positions]
    by_positions = [(n, t) for (n, e), t in recon.items() if e == args.fixed_epochs]
    fixed, per_epoch = fit_line(by_epochs)
    _, per_position = fit_line(by_positions)
    print(
        f"\nFit of the reconstruction time: {fixed:.2f} s + {per_epoch:.3f} s per "
        f"epoch at {args.fixed_positions} positions; "
        f"{1000 * per_position / args.fixed_epochs:.2f} ms per position per epoch "
        f"(at {args.fixed_epochs} epochs)."
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="dose_1e4.baseline.test")
    parser.add_argument("--positions", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--fixed-epochs", type=int, default=3)
    parser.add_argument("--fixed-positions", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input", type=Path, help="default: the namespace's file")
    add_study_options(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Sweep positions and epochs, or be one point (``--worker``)."""
    args = parse_args()
    if args.worker:
        worker(args)
        return
    args.project = prepared_study(args)
    source = args.input or input_path(args.project, args.namespace)
    results: dict[tuple[int, int], list[dict]] = {p: [] for p in points(args)}
    for repeat in range(args.repeats):
        for point, samples in results.items():
            run_dir = args.workdir / "scaling" / f"{repeat}_{point[0]}_{point[1]}"
            samples.append(sample(point, source, run_dir, args))
            print(f"repeat {repeat} {point}: {samples[-1]['job_s']:.2f} s")
    report(results, args)
    report_fits(results, args)


if __name__ == "__main__":
    main()
