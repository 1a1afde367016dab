"""Time the full-scale simulation (conf/full) of every dose; print a table and peak RSS.

Usage: ``python benchmarks/simulate_full.py [--env full]`` from the project root.
Runs the simulate nodes in-process (no catalog, nothing written), so the numbers are
the physics: FFTs, Poisson noise and view selection.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from kedro.config import OmegaConfigLoader

from fly64_recon.pipelines.simulate import nodes
from fly64_recon.science import views
from fly64_recon.settings import CONFIG_LOADER_ARGS
from fly64_recon.study import StudyDesign

PROJECT = Path(__file__).resolve().parents[1]
Row = tuple[str, float, float]


def load_parameters(env: str) -> dict[str, Any]:
    """The project's parameters in ``env``, merged as ``kedro run --env`` merges them."""
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT / "conf"), env=env, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(rows: list[Row], label: str, func: Callable, *args, **kw):
    """Call ``func``, append (label, wall s, CPU s of all threads), return its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = func(*args, **kw)
    rows.append((label, time.perf_counter() - wall, time.process_time() - cpu))
    return result


def simulate_dose(
    rows: list[Row],
    design: StudyDesign,
    probe: np.ndarray,
    obj: np.ndarray,
    scan: np.ndarray,
    params: dict[str, Any],
    dose: float,
) -> list[tuple[str, str, int]]:
    """Time one dose's patterns and views; return (view, split, positions) per view."""
    files = timed(
        rows,
        f"dose {dose:g}: patterns",
        nodes.simulate_dose,
        probe,
        obj,
        scan,
        params,
        dose=dose,
        splits=design.splits,
    )
    return [
        (view, split, len(view_file["xcoords"]))
        for view in design.phase_d_views
        for split, phase_c in files.items()
        for view_file in [
            timed(
                rows,
                f"dose {dose:g}: {view} {split}",
                views.select_view,
                phase_c,
                params,
                view=view,
                overlap=design.overlap[view],
            )
        ]
    ]


def main() -> None:
    """Simulate every dose of the design at the chosen scale and report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", default="full")
    env = parser.parse_args().env
    parameters = load_parameters(env)
    params = parameters["simulate"]
    design = StudyDesign.from_params(parameters["study"])
    rss_start = peak_rss_mib()
    rows: list[Row] = []
    probe = timed(rows, "probe", nodes.make_probe, params)
    obj = timed(rows, "object", nodes.make_object, params)
    scan = timed(rows, "scan", nodes.make_scan, params)
    counts = [
        count
        for dose in design.doses
        for count in simulate_dose(rows, design, probe, obj, scan, params, dose)
    ]
    size = params["patch_size"]
    print(f"env {env}: N = {size}, object {tuple(obj.shape)}, {len(scan)} positions")
    print(f"{'stage':<32}{'wall s':>10}{'CPU s':>10}")
    for label, wall, cpu in rows:
        print(f"{label:<32}{wall:>10.2f}{cpu:>10.2f}")
    total_wall, total_cpu = (sum(row[i] for row in rows) for i in (1, 2))
    print(f"{'total':<32}{total_wall:>10.2f}{total_cpu:>10.2f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (after imports: {rss_start:.0f} MiB)")
    for view, split, n in counts[: 2 * len(design.phase_d_views)]:
        print(f"{view} {split}: {n} positions")


if __name__ == "__main__":
    main()
