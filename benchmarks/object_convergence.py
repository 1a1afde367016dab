"""How a job's object settles, against its noise floor: the data a stopping rule on the
object is chosen from (issue 24).

Every job of the embedded default study (the files ``kedro run --pipeline simulate``
writes) runs LSQML to ``--epochs`` with conf/base's options on the CPU. After every
epoch the object is compared with the one ``--block`` epochs before, on the job's lit
pixels, after taking out the global phase, the linear phase ramp and the amplitude scale
(as the scoring does): the RMS phase change, split at ``1 / probe diameter`` cycles/px
into low and high spatial frequencies, in units of the job's shot-noise floor (the RMS
phase error the photons per lit pixel allow). Every ``--score-every`` epochs the phase
MAE against the ground truth, over the floor's MAE. One JSON line per job and epoch is
appended to ``--out``; ``--table`` prints what a rule would have done from such a file.

Usage::

    python benchmarks/object_convergence.py --out /tmp/settle.jsonl [--jobs 2]
    python benchmarks/object_convergence.py --table /tmp/settle.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]


def run_job(
    namespace: str, epochs: int, block: int, score_every: int, keep: Path | None
) -> list[dict]:
    """One job's settling curve; with ``keep``, its object every ``block`` epochs."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    sys.path.insert(0, str(PROJECT / "tests"))
    from conftest import base_parameters  # noqa: PLC0415

    from fly64_recon.datasets import NPZSource  # noqa: PLC0415
    from fly64_recon.pipelines.ptychi_baseline import nodes, task  # noqa: PLC0415
    from fly64_recon.science import convergence, scoring  # noqa: PLC0415
    from fly64_recon.study import Job  # noqa: PLC0415

    params = base_parameters()["ptychi_baseline"]
    params["lsqml"]["reconstructor_options"]["num_epochs"] = epochs
    job = Job.from_namespace(namespace)
    root = "phase_c" if job.view == "baseline" else "phase_d"
    source = NPZSource(str(PROJECT / "data/01_raw" / root / job.input_relpath))
    checked = nodes.validate_input(source, params, job)
    arrays = checked.arrays
    options = checked.options.ptychi_options("cpu")
    inputs, _ = nodes.engine_inputs(checked, slice(None), options)
    footing = scoring.job_footing(arrays, None, checked.options.illumination_fraction)
    floor = footing.noise_floor()
    scale = convergence.ChangeScale.of(
        footing.mask, footing.photons, arrays["probeGuess"]
    )
    truth = arrays["objectGuess"]
    earlier: deque[np.ndarray] = deque(maxlen=block)
    rows: list[dict] = []

    def on_epoch(loss: np.ndarray, current_object) -> bool:
        epoch = len(loss)
        obj = current_object()
        if snapshots and epoch % block == 0:
            snapshots[epoch] = obj
        row = {"job": namespace, "epoch": epoch, "loss": float(loss[-1])}
        if len(earlier) == block:
            row.update(scale.change(earlier[0], obj))
        earlier.append(obj)
        if epoch % score_every == 0:
            found = scoring.m.compare(obj, truth, footing.mask, 10)
            row["mae_over_floor"] = found["phase"]["mae"] / floor["mae"]
            row["null_over_floor"] = found["null"]["phase"]["mae"] / floor["mae"]
        rows.append(row)
        return False

    snapshots: dict[int, np.ndarray] = {0: inputs.object_init[0]} if keep else {}
    task.run_engine(inputs, options, "cpu", on_epoch, cpu_threads=1)
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        np.savez(
            keep / f"{namespace}.npz", **{f"e{e}": o for e, o in snapshots.items()}
        )
    return rows


def namespaces() -> list[str]:
    return [
        f"dose_{d}.{v}.{s}"
        for d in ("1e3", "1e4", "1e5")
        for v in ("baseline", "dense", "sparse")
        for s in ("train", "test")
    ]


def measure(args: argparse.Namespace) -> None:
    todo = [ns for ns in namespaces() if not args.only or ns in args.only]
    with ProcessPoolExecutor(args.jobs) as pool, open(args.out, "a") as out:
        futures = [
            pool.submit(
                run_job, ns, args.epochs, args.block, args.score_every, args.snapshots
            )
            for ns in todo
        ]
        for future in futures:
            for row in future.result():
                out.write(json.dumps(row) + "\n")
            out.flush()
            print(row["job"], "done", flush=True)


def curves(path: Path) -> dict[str, list[dict]]:
    """The measured rows by job, in epoch order."""
    jobs: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        jobs.setdefault(row["job"], []).append(row)
    return {job: sorted(rows, key=lambda r: r["epoch"]) for job, rows in jobs.items()}


def loss_rule_stop(rows: list[dict], window: int = 10, tolerance: float = 1e-3) -> int:
    """Where today's rule (``convergence.StoppingRule``) stops a job, else the cap."""
    from fly64_recon.science.convergence import StoppingRule  # noqa: PLC0415

    rule = StoppingRule(window=window, tolerance=tolerance, stop=True)
    loss = [r["loss"] for r in rows]
    for epoch in range(1, len(loss) + 1):
        if rule.should_stop(loss[:epoch]):
            return epoch
    return len(loss)


def object_changes(namespace: str, snapshots: Path, span: int) -> dict[int, float]:
    """The low-frequency change over ``span`` epochs at every kept epoch, in floors,
    as ``convergence.ObjectRule`` measures it (its first kept object is epoch 5)."""
    from fly64_recon.datasets import NPZSource  # noqa: PLC0415
    from fly64_recon.science import convergence, scoring  # noqa: PLC0415
    from fly64_recon.study import Job  # noqa: PLC0415

    job = Job.from_namespace(namespace)
    root = "phase_c" if job.view == "baseline" else "phase_d"
    arrays, _ = NPZSource(
        str(PROJECT / "data/01_raw" / root / job.input_relpath)
    ).load()
    footing = scoring.job_footing(arrays, None, 0.1)
    scale = convergence.ChangeScale.of(
        footing.mask, footing.photons, arrays["probeGuess"]
    )
    kept = np.load(snapshots / f"{namespace}.npz")
    objects = {int(k[1:]): kept[k] for k in kept.files}
    return {
        epoch: scale.change(objects[epoch - span], objects[epoch])["low"]
        for epoch in sorted(objects)
        if epoch - span >= convergence.OBJECT_EVERY
    }


def n_patterns(namespace: str) -> int:
    """The patterns of a job's input file."""
    from fly64_recon.datasets import NPZSource  # noqa: PLC0415
    from fly64_recon.study import Job  # noqa: PLC0415

    job = Job.from_namespace(namespace)
    root = "phase_c" if job.view == "baseline" else "phase_d"
    source = NPZSource(str(PROJECT / "data/01_raw" / root / job.input_relpath))
    return source.shapes(["diffraction"])["diffraction"][0]


def object_rule_stop(changes: dict[int, float], settled: float, cap: int) -> int:
    """Where the object rule stops: the first measurement below ``settled``."""
    return next((e for e, low in changes.items() if low < settled), cap)


def score_at(rows: list[dict], epoch: int) -> tuple[float, float]:
    """MAE / floor and null / floor at the last scored epoch at or before ``epoch``."""
    scored = [r for r in rows if "mae_over_floor" in r and r["epoch"] <= epoch]
    row = scored[-1] if scored else next(r for r in rows if "mae_over_floor" in r)
    return row["mae_over_floor"], row["null_over_floor"]


def table(path: Path, snapshots: Path) -> None:
    """Per rule: epochs, and the jobs against the goal of issue 24 (baseline and dense
    jobs within 2x their floor where the null is above 2x; no 1e3 job worse than the
    loss rule leaves it, by more than 2 %)."""
    jobs = curves(path)
    patterns = {job: n_patterns(job) for job in jobs}
    today = {job: loss_rule_stop(rows) for job, rows in jobs.items()}
    stops = {"loss (today)": today, "cap": {job: 100 for job in jobs}}
    for span in (10, 20, 30):
        changes = {job: object_changes(job, snapshots, span) for job in jobs}
        for settled in (0.1, 0.15, 0.2, 0.25, 0.3):
            stops[f"object {span}/{settled}"] = {
                job: object_rule_stop(changes[job], settled, rows[-1]["epoch"])
                for job, rows in jobs.items()
            }
    cost_today = sum(patterns[job] * epochs for job, epochs in today.items())
    print(
        f"{'rule':<14} {'epochs':>6} {'work':>5} {'goal':>5} {'1e3':>3}  "
        "epochs:MAE/floor per job (work: pattern-epochs over the loss rule's)"
    )
    for name, stop in stops.items():
        met, eligible, worse, cells = 0, 0, 0, []
        for job, rows in jobs.items():
            mae, null = score_at(rows, stop[job])
            if "sparse" not in job and null > 2:
                eligible += 1
                met += mae <= 2
            worse += job.startswith("dose_1e3") and (
                mae > score_at(rows, today[job])[0] * 1.02
            )
            cells.append(f"{stop[job]}:{mae:.2f}")
        total = sum(stop.values())
        work = sum(patterns[job] * epochs for job, epochs in stop.items()) / cost_today
        print(
            f"{name:<14} {total:>6} {work:>5.2f} {met:>2}/{eligible:<2} {worse:>3}  "
            + " ".join(cells)
        )
    print("jobs:", " ".join(job.removeprefix("dose_") for job in jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--snapshots", type=Path, help="keep the objects here")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--score-every", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="these jobs (default: every one)")
    args = parser.parse_args()
    if args.out:
        measure(args)
    if args.table:
        table(args.table, args.snapshots)


if __name__ == "__main__":
    main()
