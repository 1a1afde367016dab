"""How a job's object settles, against its noise floor: the data a stopping rule on the
object is chosen from (issue 24).

Every job of the embedded default study (the files ``kedro run --pipeline simulate``
writes) runs LSQML to ``--epochs`` with conf/base's options on the CPU. After every
epoch the object is compared with the one ``--block`` epochs before, on the job's lit
pixels, after taking out the global phase, the linear phase ramp and the amplitude scale
(as the scoring does): the RMS phase change, split at ``1 / probe diameter`` cycles/px
into low and high spatial frequencies, in units of the job's shot-noise floor (the RMS
phase error the photons per lit pixel allow). Every ``--score-every`` epochs the phase
MAE against the ground truth, over the floor's MAE. One JSON line per job and epoch goes
to ``--out``; ``--table`` prints what a rule would have done from such a file.

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
    with ProcessPoolExecutor(args.jobs) as pool, open(args.out, "w") as out:
        futures = [
            pool.submit(
                run_job, ns, args.epochs, args.block, args.score_every, args.snapshots
            )
            for ns in namespaces()
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


def object_rule_stop(rows: list[dict], settled: float, every: int) -> int:
    """The first epoch (a multiple of ``every``) whose last block changed the object by
    less than ``settled`` floors at low and at high frequencies, or whose high-frequency
    change grew while the low one had settled."""
    last_high = None
    for row in rows:
        if row["epoch"] % every or "low" not in row:
            continue
        low, high = row["low"], row["high"]
        if low < settled and high < settled:
            return row["epoch"]
        if last_high is not None and low < settled and high > last_high:
            return row["epoch"]
        last_high = high
    return rows[-1]["epoch"]


def score_at(rows: list[dict], epoch: int) -> tuple[float, float]:
    """MAE / floor and null / floor at the last scored epoch at or before ``epoch``."""
    scored = [r for r in rows if "mae_over_floor" in r and r["epoch"] <= epoch]
    row = scored[-1] if scored else next(r for r in rows if "mae_over_floor" in r)
    return row["mae_over_floor"], row["null_over_floor"]


def table(path: Path) -> None:
    """Per rule: epochs, and the jobs against the goal of issue 24."""
    jobs = curves(path)
    rules = {"loss (today)": loss_rule_stop}
    rules["cap"] = lambda rows: rows[-1]["epoch"]
    for settled in (0.5, 0.3, 0.2, 0.1):
        rules[f"object < {settled}"] = lambda rows, t=settled: object_rule_stop(
            rows, t, 5
        )
    today = {job: score_at(rows, loss_rule_stop(rows))[0] for job, rows in jobs.items()}
    print(
        f"{'rule':<16} {'epochs':>6} {'goal met':>9} {'worse 1e3':>9}  MAE/floor at stop"
    )
    for name, stop in rules.items():
        epochs, met, eligible, worse, cells = 0, 0, 0, 0, []
        for job, rows in jobs.items():
            at = stop(rows)
            mae, null = score_at(rows, at)
            epochs += at
            if "sparse" not in job and null > 2:
                eligible += 1
                met += mae <= 2
            if job.startswith("dose_1e3") and mae > today[job] * 1.02:
                worse += 1
            cells.append(f"{job.replace('dose_', '')}:{at}:{mae:.2f}")
        print(
            f"{name:<16} {epochs:>6} {met:>4}/{eligible:<4} {worse:>9}  {' '.join(cells)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path)
    parser.add_argument("--snapshots", type=Path, help="keep the objects here")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--score-every", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if args.out:
        measure(args)
    if args.table:
        table(args.table)


if __name__ == "__main__":
    main()
