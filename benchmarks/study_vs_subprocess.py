"""The embedded 18-job study through ``kedro run`` versus a subprocess per job.

Usage (from the project root)::

    python benchmarks/study_vs_subprocess.py [--epochs 2] [--repeats 2]
        [--workdir /tmp/fly64_bench]

* ``kedro``: one ``kedro run --pipeline ptychi_baseline --runner SequentialRunner`` of
  the whole embedded study (conf/base, 3 doses x 3 views x 2 splits) into a fresh
  artifact root: one Python process (``benchmarks/runners.py`` measures the default,
  parallel runner), one import of torch and pty-chi, every job validated, reconstructed,
  written, plotted and entered in the manifest.
* ``subprocess``: the original study's shape: for each job, in turn, a fresh
  ``python benchmarks/bare_job.py`` that imports torch and pty-chi and runs the same
  LSQML job (same file, options, epochs, device), writing its NPZ. It does less per job
  than the pipeline (no validation, hash, figure or manifest), so it is the cheapest
  subprocess-per-job orchestrator there can be.

Both arms use the same reduced epoch count (``--epochs``, default 2; conf/base has 20),
so the reconstruction is the same work and the difference is process start, imports
and the per-job extras. Wall times are measured from outside each process; arms
alternate, and the ratio is the median of per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _common import (
    add_study_options,
    epochs_param,
    input_path,
    kedro_command,
    kedro_env,
    median,
    prepared_study,
    print_table,
    run_logged,
    spread,
    study_namespaces,
    worker_command,
)

ARMS = ("kedro", "subprocess")


def kedro_arm(project: Path, out: Path, epochs: int) -> dict:
    """The whole study in one ``kedro run``; every job must succeed."""
    params = f"{epochs_param(epochs)},artifact_root={out}"
    command = kedro_command(
        *("run", "--pipeline", "ptychi_baseline", "--runner", "SequentialRunner"),
        *("--params", params),
    )
    wall = run_logged(command, project, out.parent / "kedro.log", kedro_env())
    manifest = json.loads((out / "reconstruction_manifest.json").read_text())
    jobs = manifest["jobs"]
    statuses = {job["status"] for job in jobs}
    if statuses != {"succeeded"}:
        raise RuntimeError(f"kedro arm: job statuses {statuses}, expected succeeded")
    return {
        "wall_s": wall,
        "jobs": len(jobs),
        "reconstruction_s": sum(job["wall_time_s"] for job in jobs),
    }


def subprocess_arm(project: Path, out: Path, epochs: int) -> dict:
    """One fresh Python process per job, one after the other."""
    wall, results = 0.0, []
    for namespace in study_namespaces(project):
        folder = out / namespace
        folder.mkdir(parents=True)
        command = worker_command(
            "bare_job.py",
            str(input_path(project, namespace)),
            str(folder / "ptychi_reconstruction.npz"),
            f"--epochs={epochs}",
            f"--result={folder / 'result.json'}",
        )
        wall += run_logged(command, project, folder / "job.log", kedro_env())
        results.append(json.loads((folder / "result.json").read_text()))
    return {
        "wall_s": wall,
        "jobs": len(results),
        "reconstruction_s": sum(r["reconstruction_s"] for r in results),
        "import_s": sum(r["import_s"] for r in results),
    }


def collect(args: argparse.Namespace, project: Path) -> dict[str, list[dict]]:
    """``repeats`` samples of both arms, alternating which goes first."""
    samples: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):
        for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
            run_dir = args.workdir / "study" / f"{repeat}_{arm}"
            shutil.rmtree(run_dir, ignore_errors=True)
            out = run_dir / "out"
            out.mkdir(parents=True)
            run = kedro_arm if arm == "kedro" else subprocess_arm
            samples[arm].append(run(project, out, args.epochs))
            print(f"repeat {repeat} {arm}: {samples[arm][-1]['wall_s']:.1f} s")
    return samples


def report(samples: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """Totals per arm and the ratio kedro / subprocess."""
    ratios = [
        k["wall_s"] / s["wall_s"]
        for k, s in zip(samples["kedro"], samples["subprocess"], strict=True)
    ]
    rows = []
    for arm in ARMS:
        wall = [s["wall_s"] for s in samples[arm]]
        recon = median([s["reconstruction_s"] for s in samples[arm]])
        imports = median([s.get("import_s", float("nan")) for s in samples[arm]])
        jobs = samples[arm][0]["jobs"]
        rows.append(
            [arm, jobs, median(wall), spread(wall), recon, median(wall) - recon]
            + [imports, (median(wall) - recon) / jobs]
        )
    print_table(
        f"Embedded study, {args.epochs} epochs per job (both arms), CPU, "
        f"{args.repeats} repeats: ratio kedro / subprocess = {median(ratios):.3f} "
        f"(per repeat: {', '.join(f'{r:.3f}' for r in ratios)})",
        ["arm", "jobs", "wall s", "min-max", "reconstruction s", "other s"]
        + ["imports s (sum)", "other s per job"],
        rows,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    add_study_options(parser)
    return parser.parse_args()


def main() -> None:
    """Run both arms and print the table."""
    args = parse_args()
    project = prepared_study(args)
    report(collect(args, project), args)


if __name__ == "__main__":
    main()
