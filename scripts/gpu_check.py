"""Helpers of ``scripts/gpu_check.sh``: job tables from manifests, and job groups.

Usage::

    python scripts/gpu_check.py report MANIFEST [MANIFEST ...] --title T --wall S
        [--gpu-log nvidia-smi.csv]
    python scripts/gpu_check.py compare --row "label,wall_s,MANIFEST,GPU_LOG" ...
    python scripts/gpu_check.py groups --conf PROJECT/conf --env full --groups 3
    python scripts/gpu_check.py to-node NAMESPACE

``report`` prints one row per job that ran (from the manifest's ``wall_time_s``,
``num_epochs``, ``peak_gpu_memory_mb``) and the totals; ``--gpu-log`` is a CSV of
``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used`` samples taken during
the run (GPU busy fraction and the most memory in use, all processes together).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RAN = ("succeeded", "failed")


def emit(line: str = "") -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table."""
    emit("| " + " | ".join(headers) + " |")
    emit("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        emit("| " + " | ".join(_cell(v) for v in row) + " |")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def jobs(manifest: Path) -> list[dict[str, Any]]:
    """The manifest's entries of jobs that ran in this run (not cached or skipped)."""
    entries = json.loads(manifest.read_text())["jobs"]
    return [e for e in entries if e.get("status") in RAN]


def job_row(entry: dict[str, Any]) -> list[Any]:
    """namespace, status, device, patterns, epochs, wall, epochs/s, peak GPU MiB."""
    wall = entry.get("wall_time_s")
    epochs = entry.get("num_epochs")
    rate = epochs / wall if wall and epochs else None
    return [
        entry["namespace"],
        entry["status"],
        entry.get("device"),
        entry.get("n_patterns"),
        epochs,
        wall,
        rate,
        entry.get("peak_gpu_memory_mb"),
    ]


def gpu_usage(log: Path | None) -> tuple[float | None, float | None]:
    """Fraction of samples with the GPU busy, and the peak memory used (MiB)."""
    if log is None or not log.exists():
        return None, None
    busy, memory = [], []
    with log.open() as handle:
        for row in csv.reader(handle):
            try:
                busy.append(float(row[1]) > 0)
                memory.append(float(row[2]))
            except (IndexError, ValueError):
                continue
    if not busy:
        return None, None
    return statistics.mean(busy), max(memory)


def report(args: argparse.Namespace) -> None:
    """Per-job table and totals of one run."""
    entries = [e for manifest in args.manifests for e in jobs(manifest)]
    emit(f"\n{args.title}\n")
    table(
        ["job", "status", "device", "patterns", "epochs", "wall s", "epochs/s"]
        + ["peak GPU MiB (torch)"],
        [job_row(e) for e in entries],
    )
    busy, used = gpu_usage(args.gpu_log)
    job_sum = sum(e.get("wall_time_s") or 0.0 for e in entries)
    failed = sum(e["status"] == "failed" for e in entries)
    emit(
        f"\n{len(entries)} jobs ({failed} failed); run wall time {args.wall:.1f} s; "
        f"sum of job wall times {job_sum:.1f} s"
        + ("" if busy is None else f"; GPU busy in {100 * busy:.0f}% of samples")
        + ("" if used is None else f"; peak GPU memory in use {used:.0f} MiB")
    )


def compare(args: argparse.Namespace) -> None:
    """One row per mode: wall time, jobs, GPU busy fraction, memory in use."""
    rows = []
    for spec in args.row:
        label, wall, manifest, log = spec.split(",")
        entries = jobs(Path(manifest))
        busy, used = gpu_usage(Path(log))
        rows.append(
            [label, len(entries), float(wall)]
            + [sum(e.get("wall_time_s") or 0.0 for e in entries)]
            + [None if busy is None else 100 * busy, used]
        )
    emit(f"\n{args.title}\n")
    table(
        ["mode", "jobs", "wall s", "sum of job s", "GPU busy %", "GPU MiB in use"],
        rows,
    )


def groups(args: argparse.Namespace) -> None:
    """The design's namespaces in ``groups`` comma-separated lines, views spread."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from fly64_recon.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415
    from fly64_recon.study import StudyDesign  # noqa: PLC0415

    loader = OmegaConfigLoader(
        conf_source=str(args.conf), env=args.env, **CONFIG_LOADER_ARGS
    )
    design = StudyDesign.from_params(loader["parameters"]["study"])
    ordered = sorted(design.jobs(), key=lambda j: (j.view, j.split, j.dose))
    count = max(1, min(args.groups, len(ordered)))
    for index in range(count):
        emit(",".join(job.namespace for job in ordered[index::count]))


def to_node(args: argparse.Namespace) -> None:
    """The simulate node that writes a job's input (for ``kedro run --to-nodes``)."""
    from fly64_recon.study import Job, dose_namespace  # noqa: PLC0415

    job = Job.from_namespace(args.namespace)
    last = (
        "simulate_dose" if job.view == "baseline" else f"select_{job.view}_{job.split}"
    )
    emit(f"simulate.{dose_namespace(job.dose)}.{last}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("report")
    rep.add_argument("manifests", type=Path, nargs="+")
    rep.add_argument("--title", required=True)
    rep.add_argument("--wall", type=float, required=True)
    rep.add_argument("--gpu-log", type=Path)
    cmp_ = commands.add_parser("compare")
    cmp_.add_argument("--title", required=True)
    cmp_.add_argument("--row", action="append", required=True)
    grp = commands.add_parser("groups")
    grp.add_argument("--conf", type=Path, required=True)
    grp.add_argument("--env", default="full")
    grp.add_argument("--groups", type=int, default=3)
    node = commands.add_parser("to-node")
    node.add_argument("namespace")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch a subcommand."""
    args = parse_args(argv)
    commands = {"report": report, "compare": compare, "groups": groups}
    commands.get(args.command, to_node)(args)


if __name__ == "__main__":
    main()
