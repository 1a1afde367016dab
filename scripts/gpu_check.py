"""Helpers of ``scripts/gpu_check.sh``: the smoke job, and tables from what a run left.

Usage::

    python scripts/gpu_check.py smoke --conf PROJECT/conf --device cuda [--epochs 4]
    python scripts/gpu_check.py report MANIFEST --title T --wall S [--gpu-log CSV]
        [--apps-log CSV] [--predict-epochs 100] [--results FILE --label L]
    python scripts/gpu_check.py mae MANIFEST [--reference MANIFEST]
    python scripts/gpu_check.py versus MANIFEST BARE_JSON --namespace NS [--results F]
    python scripts/gpu_check.py to-node NAMESPACE
    python scripts/gpu_check.py input NAMESPACE --data ROOT

``smoke`` imports the project, simulates 512 patterns of the embedded study's beam and
object, runs the project's LSQML job on them twice for a few epochs and says whether
the two runs are identical bit for bit. ``report`` prints one row per job that ran
(``epochs_run``, seconds per epoch, peak GPU memory allocated and reserved, warm-up)
and the run's totals; ``--gpu-log`` is a CSV of ``nvidia-smi
--query-gpu=timestamp,utilization.gpu,memory.used`` samples (the mean utilisation, the
most memory in use) and ``--apps-log`` one of ``--query-compute-apps=pid,used_memory``
samples (the most memory each process held). ``mae`` prints the study's phase MAE by
dose and view (mean over splits), beside a reference run's. ``versus`` compares one
job through the pipeline with ``benchmarks/bare_job.py`` on the same file. Each row
also goes to ``--results`` (a Markdown table the shell script prints at the end).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RAN = ("succeeded", "failed")
SMOKE_PATTERNS = 512
RESULT_HEADERS = ["step", "wall s", "jobs", "s per epoch", "GPU util %", "note"]


def emit(line: str = "") -> None:
    """Write one line to stdout at once (a script stopped by a timeout has said it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table."""
    emit("| " + " | ".join(headers) + " |")
    emit("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        emit(markdown_row(row))


def markdown_row(row: Sequence[Any]) -> str:
    return "| " + " | ".join(_cell(v) for v in row) + " |"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def add_result(path: Path | None, row: Sequence[Any]) -> None:
    """Append one row to the results table (its header written first)."""
    if path is None:
        return
    if not path.exists():
        path.write_text(
            markdown_row(RESULT_HEADERS)
            + "\n|"
            + "|".join("---" for _ in RESULT_HEADERS)
            + "|\n"
        )
    with path.open("a") as handle:
        handle.write(markdown_row(row) + "\n")


# The jobs of a manifest.


def jobs(manifest: Path) -> list[dict[str, Any]]:
    """The manifest's entries of jobs that ran in this run (not cached or skipped)."""
    entries = json.loads(manifest.read_text())["jobs"]
    return [e for e in entries if e.get("status") in RAN]


def seconds_per_epoch(entry: dict[str, Any]) -> float | None:
    """The job's reconstruction time over the epochs it ran (not over its cap)."""
    wall, epochs = entry.get("wall_time_s"), entry.get("epochs_run")
    return wall / epochs if wall and epochs else None


def job_row(entry: dict[str, Any]) -> list[Any]:
    return [
        entry["namespace"],
        entry["status"],
        entry.get("device"),
        entry.get("worker"),
        entry.get("n_patterns"),
        entry.get("epochs_run"),
        entry.get("wall_time_s"),
        seconds_per_epoch(entry),
        entry.get("warmup_s"),
        entry.get("peak_gpu_memory_mb"),
        entry.get("peak_gpu_memory_reserved_mb"),
    ]


JOB_HEADERS = [
    "job",
    "status",
    "device",
    "worker",
    "patterns",
    "epochs run",
    "wall s",
    "s per epoch",
    "warm-up s",
    "peak MiB allocated",
    "peak MiB reserved",
]


def gpu_usage(log: Path | None) -> tuple[float | None, float | None]:
    """The mean GPU utilisation (%) over the samples, and the most memory in use (MiB)."""
    rows = _numbers(log, 1, 2)
    if not rows:
        return None, None
    return statistics.mean(r[0] for r in rows), max(r[1] for r in rows)


def memory_per_process(log: Path | None) -> dict[str, float]:
    """The most GPU memory each process held (MiB), by pid."""
    most: dict[str, float] = defaultdict(float)
    if log is None or not log.exists():
        return {}
    with log.open() as handle:
        for row in csv.reader(handle):
            try:
                most[row[0].strip()] = max(most[row[0].strip()], float(row[1]))
            except (IndexError, ValueError):
                continue
    return dict(most)


def _numbers(log: Path | None, *columns: int) -> list[tuple[float, ...]]:
    if log is None or not log.exists():
        return []
    rows = []
    with log.open() as handle:
        for row in csv.reader(handle):
            try:
                rows.append(tuple(float(row[c]) for c in columns))
            except (IndexError, ValueError):
                continue
    return rows


def report(args: argparse.Namespace) -> None:
    """Per-job table and totals of one run; its row in the results."""
    entries = jobs(args.manifest)
    emit(f"\n{args.title}\n")
    table(JOB_HEADERS, [job_row(e) for e in entries])
    util, used = gpu_usage(args.gpu_log)
    processes = memory_per_process(args.apps_log)
    per_epoch = [s for s in map(seconds_per_epoch, entries) if s is not None]
    failed = sum(e["status"] == "failed" for e in entries)
    devices = sorted({str(e.get("device")) for e in entries})
    workers = len({e.get("worker") for e in entries}) or 1
    facts = [
        f"{len(entries)} jobs ({failed} failed) on {', '.join(devices) or '-'}",
        f"run wall time {args.wall:.1f} s",
        f"sum of job wall times {sum(e.get('wall_time_s') or 0 for e in entries):.1f} s",
    ]
    if util is not None:
        facts.append(
            f"mean GPU utilisation {util:.0f}%, most memory in use {used:.0f} MiB"
        )
    if processes:
        facts.append(
            f"{len(processes)} GPU processes, each at most "
            f"{max(processes.values()):.0f} MiB (mean of maxima "
            f"{statistics.mean(processes.values()):.0f} MiB)"
        )
    predicted = None
    if args.predict_epochs and per_epoch:
        ran = max(e.get("epochs_run") or 0 for e in entries)
        # Each further epoch costs every job its measured epoch, the workers in parallel.
        predicted = args.wall + (args.predict_epochs - ran) * sum(per_epoch) / workers
        facts.append(
            f"predicted at {args.predict_epochs} epochs: {predicted:.0f} s "
            f"({workers} workers)"
        )
    emit("\n" + "; ".join(facts))
    note = f"{failed} failed" if failed else ", ".join(devices)
    if predicted is not None:
        note += f"; {args.predict_epochs} epochs ~{predicted:.0f} s"
    add_result(
        args.results,
        [
            args.label or args.title,
            args.wall,
            len(entries),
            statistics.median(per_epoch) if per_epoch else None,
            util,
            note,
        ],
    )


def phase_mae(manifest: Path) -> dict[tuple[str, float], float]:
    """Each (view, dose)'s phase MAE, the mean over its splits."""
    values: dict[tuple[str, float], list[float]] = defaultdict(list)
    for entry in json.loads(manifest.read_text())["jobs"]:
        mae = ((entry.get("metrics") or {}).get("phase") or {}).get("mae")
        if mae is not None:
            values[(entry["view"], entry["dose"])].append(mae)
    return {key: statistics.mean(v) for key, v in values.items()}


def mae(args: argparse.Namespace) -> None:
    """The study's phase MAE by view and dose, beside the reference's and their ratio."""
    ours = phase_mae(args.manifest)
    theirs = phase_mae(args.reference) if args.reference else {}
    rows = []
    for (view, dose), value in sorted(ours.items()):
        other = theirs.get((view, dose))
        rows.append(
            [view, f"{dose:.0e}", value, other, value / other if other else None]
        )
    emit("\nPhase MAE (rad), mean over splits\n")
    table(["view", "dose", "this run", "reference", "ratio"], rows)
    ratios = [row[-1] for row in rows if row[-1] is not None]
    if ratios:
        emit(
            f"\nratio to the reference: {min(ratios):.3f} to {max(ratios):.3f} "
            f"(median {statistics.median(ratios):.3f})"
        )


def versus(args: argparse.Namespace) -> None:
    """One job through the pipeline against the bare pty-chi script on the same file."""
    (entry,) = [e for e in jobs(args.manifest) if e["namespace"] == args.namespace]
    bare = json.loads(args.bare.read_text())
    # Both sides with their set-up: the bare script's reconstruction includes it.
    ours = (entry.get("warmup_s") or 0.0) + entry["wall_time_s"]
    rows = [
        [
            "pipeline",
            entry["epochs_run"],
            ours,
            seconds_per_epoch(entry),
            entry.get("warmup_s"),
            entry.get("peak_gpu_memory_mb"),
            entry.get("peak_gpu_memory_reserved_mb"),
        ],
        [
            "bare pty-chi",
            bare["epochs"],
            bare["reconstruction_s"],
            bare["reconstruction_s"] / bare["epochs"],
            None,
            bare.get("peak_gpu_memory_mb"),
            bare.get("peak_gpu_memory_reserved_mb"),
        ],
    ]
    emit(
        f"\nOne job, {args.namespace}: the pipeline vs bare pty-chi on the same file\n"
    )
    table(
        [
            "arm",
            "epochs",
            "reconstruction s (with set-up)",
            "s per epoch",
            "of which warm-up s",
            "peak MiB allocated",
            "peak MiB reserved",
        ],
        rows,
    )
    ratio = ours / bare["reconstruction_s"]
    emit(f"\npipeline / bare = {ratio:.3f} (goal at most 1.05)")
    add_result(
        args.results,
        [
            f"{args.namespace} pipeline vs bare",
            ours,
            1,
            seconds_per_epoch(entry),
            None,
            f"ratio {ratio:.3f}",
        ],
    )


# The smoke job.


def smoke(args: argparse.Namespace) -> int:
    """One small job twice on the device (and on a GPU once more with the patterns
    kept there); each result compared bit for bit with the first."""
    started = time.perf_counter()
    import numpy as np  # noqa: PLC0415 - the import time is reported
    import torch  # noqa: PLC0415

    from fly64_recon.pipelines.ptychi_baseline import engines, task  # noqa: PLC0415

    imported = time.perf_counter() - started
    params = _embedded_params(args.conf)
    data = _smoke_data(params["simulate"])
    lsqml = params["ptychi_baseline"]["lsqml"]
    variants = {"rerun": {}}
    if args.device != "cpu":  # pty-chi sends data kept "on the device" to cuda
        variants["patterns on the GPU"] = {"save_data_on_device": True}
    runs = {}
    for name, data_options in {"first run": {}, **variants}.items():
        options = engines.build_options(
            engines.ENGINES["LSQML"],
            {
                **lsqml,
                "reconstructor_options": {
                    **lsqml["reconstructor_options"],
                    "num_epochs": args.epochs,
                },
                "data_options": data_options,
            },
            args.device,
        )
        runs[name] = task.run_engine(data, options, args.device)
    first = runs["first run"]
    emit(
        f"smoke: torch {torch.__version__}, imports {imported:.1f} s; "
        f"{len(data.intensities)} patterns of {data.intensities.shape[-1]}^2, "
        f"{args.epochs} epochs on {first.device}, final loss {first.loss[-1]:.5g}"
        + ("" if first.warmup_s is None else f"; warm-up {first.warmup_s:.2f} s")
        + (
            ""
            if first.peak_gpu_memory_mb is None
            else f"; peak {first.peak_gpu_memory_mb:.0f} MiB allocated, "
            f"{first.peak_gpu_memory_reserved_mb:.0f} MiB reserved"
        )
    )
    verdicts = []
    for name, result in runs.items():
        same = all(
            np.array_equal(getattr(first, part), getattr(result, part))
            for part in ("object", "probe", "loss")
        )
        gap = float(np.max(np.abs(first.object - result.object)))
        verdict = "yes" if same else f"no (max |object difference| {gap:.3g})"
        emit(f"smoke: {name}: {result.wall_time_s:.2f} s; same as the first: {verdict}")
        if name != "first run":
            verdicts.append(f"{name} identical: {'yes' if same else 'no'}")
    add_result(
        args.results,
        [
            "smoke",
            time.perf_counter() - started,
            len(runs),
            runs["rerun"].wall_time_s / args.epochs,
            None,
            f"{first.device}; " + "; ".join(verdicts),
        ],
    )
    return 0


def _embedded_params(conf: Path) -> dict[str, Any]:
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from fly64_recon.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415

    loader = OmegaConfigLoader(conf_source=str(conf), **CONFIG_LOADER_ARGS)
    return loader["parameters"]


def _smoke_data(simulate: dict[str, Any]) -> Any:
    """``SMOKE_PATTERNS`` patterns of the embedded study's beam and object."""
    from fly64_recon.contract import read_metadata  # noqa: PLC0415
    from fly64_recon.pipelines.ptychi_baseline import task  # noqa: PLC0415
    from fly64_recon.pipelines.simulate import nodes  # noqa: PLC0415

    # The train split is the half of the scan's rows below the middle.
    rows = 2 * SMOKE_PATTERNS // simulate["scan"]["points_per_row"]
    params = {**simulate, "scan": {**simulate["scan"], "rows": rows}}
    probe, obj = nodes.make_probe(params), nodes.make_object(params)
    files = nodes.simulate_dose(
        probe, obj, nodes.make_scan(params), params, dose=1e4, splits=("train",)
    )
    arrays = next(iter(files.values()))
    return task.to_ptychi_inputs(
        arrays["diffraction"],
        arrays["probeGuess"],
        arrays["objectGuess"],
        arrays["xcoords"],
        arrays["ycoords"],
        read_metadata(arrays)["intensity_scale"],
        "flat",
    )


def to_node(args: argparse.Namespace) -> None:
    """The simulate node that writes a job's input (for ``kedro run --to-nodes``)."""
    from fly64_recon.study import Job, dose_namespace  # noqa: PLC0415

    job = Job.from_namespace(args.namespace)
    last = (
        "simulate_dose" if job.view == "baseline" else f"select_{job.view}_{job.split}"
    )
    emit(f"simulate.{dose_namespace(job.dose)}.{last}")


def input_file(args: argparse.Namespace) -> None:
    """A job's input file under a data folder holding ``phase_c`` and ``phase_d``."""
    from fly64_recon.study import Job  # noqa: PLC0415

    job = Job.from_namespace(args.namespace)
    phase = "phase_c" if job.view == "baseline" else "phase_d"
    emit(str(args.data / phase / job.input_relpath))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    smk = commands.add_parser("smoke")
    smk.add_argument("--conf", type=Path, required=True)
    smk.add_argument("--device", default="cuda")
    smk.add_argument("--epochs", type=int, default=4)
    rep = commands.add_parser("report")
    rep.add_argument("manifest", type=Path)
    rep.add_argument("--title", required=True)
    rep.add_argument("--wall", type=float, required=True)
    rep.add_argument("--gpu-log", type=Path)
    rep.add_argument("--apps-log", type=Path)
    rep.add_argument("--predict-epochs", type=int)
    rep.add_argument("--label")
    mae_ = commands.add_parser("mae")
    mae_.add_argument("manifest", type=Path)
    mae_.add_argument("--reference", type=Path)
    vs = commands.add_parser("versus")
    vs.add_argument("manifest", type=Path)
    vs.add_argument("bare", type=Path)
    vs.add_argument("--namespace", required=True)
    node = commands.add_parser("to-node")
    node.add_argument("namespace")
    where = commands.add_parser("input")
    where.add_argument("namespace")
    where.add_argument("--data", type=Path, required=True)
    for sub in (smk, rep, vs):
        sub.add_argument("--results", type=Path)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch a subcommand."""
    args = parse_args(argv)
    commands = {
        "smoke": smoke,
        "report": report,
        "mae": mae,
        "versus": versus,
        "to-node": to_node,
        "input": input_file,
    }
    return commands[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
