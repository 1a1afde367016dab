"""What the input and fit checks of issue 25 cost, against the default run they guard.

For an embedded study job's file and a full-scale one (simulated by the project's own
nodes), in fresh processes: loading and validating the file (``NPZSource.load`` and
``contract.validate``) with this checkout's code and with ``--before``'s (a checkout
before the checks, e.g. a git worktree of commit 01fe4e0), and the shot-noise loss floor
(``nodes.loss_floor``: ``beam.shot_noise_loss`` over up to 256 of the job's patterns,
once per job). The 18 jobs' share of the default run is the
difference (and the floor) times 18, over the run's wall time (``--run-s``).

Usage::

    python benchmarks/checks.py --before /tmp/before/src --run-s 86 [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, print_table

SHAPES = {  # name: (patch size, object side, scan rows)
    "embedded job": (64, 512, 32),
    "full-scale job": (128, 464, 92),
}
MEASURE = """
import json, statistics, sys, time
from fly64_recon.contract import validate
from fly64_recon.datasets.npz import NPZSource
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    arrays, _ = NPZSource(sys.argv[1]).load()
    validate(arrays, sys.argv[1])
    times.append(time.perf_counter() - started)
print(json.dumps(statistics.median(times)))
"""


def write_job_file(folder: Path, patch: int, side: int, rows: int) -> Path:
    """One test split of the study at dose 1e4, by the simulate pipeline's nodes."""
    from kedro.config import OmegaConfigLoader

    from fly64_recon.datasets.npz import npz_bytes
    from fly64_recon.pipelines.simulate import nodes
    from fly64_recon.settings import CONFIG_LOADER_ARGS

    conf = Path(__file__).resolve().parents[1] / "conf"
    base = OmegaConfigLoader(str(conf), **CONFIG_LOADER_ARGS)["parameters"]["simulate"]
    scan = {**base["scan"], "rows": rows, "points_per_row": rows}
    params = {**base, "patch_size": patch, "object_shape": [side, side], "scan": scan}
    probe, obj = nodes.make_probe(params), nodes.make_object(params)
    split = nodes.simulate_dose(
        probe, obj, nodes.make_scan(params), params, dose=1e4, splits=("test",)
    )["test"]
    path = folder / f"job_{patch}.npz"
    path.write_bytes(npz_bytes(split))
    return path


def timed(src: str, path: Path, repeats: int) -> float:
    """Load + validate in a fresh process with ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def floor_s(path: Path, repeats: int) -> float:
    """The job's own loss-floor step (``nodes.loss_floor``), median seconds."""
    import statistics
    import time
    import types

    from fly64_recon.datasets.npz import NPZSource
    from fly64_recon.pipelines.ptychi_baseline import engines, nodes

    arrays, _ = NPZSource(str(path)).load()
    checked = types.SimpleNamespace(arrays=arrays)
    options = engines.build_options(
        engines.ENGINES["LSQML"],
        {"reconstructor_options": {"noise_model": "gaussian"}},
        "cpu",
    )
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        nodes.loss_floor(checked, slice(None), options)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="src/ of a checkout before")
    parser.add_argument("--run-s", type=float, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    here = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, shape in SHAPES.items():
            path = write_job_file(Path(folder), *shape)
            now = timed(here, path, args.repeats)
            before = timed(args.before, path, args.repeats)
            floor = floor_s(path, args.repeats)
            added = max(now - before, 0.0) + floor
            share = 100 * 18 * added / args.run_s if name == "embedded job" else None
            rows.append([name, before, now, floor, added, share])
            print(f"measured {name}", flush=True)
    print_table(
        "The checks of issue 25: seconds per job (medians), share of a default run",
        [
            "job",
            "load + validate before",
            "now",
            "loss floor",
            "added per job",
            "% of the default run (its 18 jobs)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
