"""The default runner against the sequential reference, and one job against bare pty-chi.

Usage (from the project root)::

    python benchmarks/runners.py [--repeats 2] [--job-repeats 3] [--epochs 20]
        [--namespace dose_1e4.baseline.test] [--workdir /tmp/fly64_bench]

Four arms, each a fresh process timed from outside, in one invocation, interleaved
(the order of each pair alternates every repeat), with nothing pinned: each arm runs
with the threads its own defaults give it.

* ``default``: ``kedro run --pipeline ptychi_baseline``, the 18-job embedded study with
  the project's default runner (independent jobs at once, one per core).
* ``reference``: the same with ``--runner SequentialRunner --params
  ptychi_baseline.cpu_threads=1``: the project's behaviour before the default runner.
* ``one job``: ``kedro run --pipeline ptychi_baseline --namespace NAMESPACE``: one job
  through the pipeline (it runs in the kedro process with torch's default threads).
* ``bare``: ``python benchmarks/bare_job.py`` on the same file, with torch's defaults.

Every kedro arm writes into a fresh artifact root (nothing cached) and must succeed.
The table shows medians; the ratios are medians of per-repeat ratios: the study's
wall time (target at most 0.6) and the job's reconstruction (task build + epochs,
the record's ``wall_time_s`` against the script's ``reconstruction_s``; target at
most 1.05), with the whole process beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from _common import (
    add_study_options,
    bare_device,
    epochs_param,
    input_path,
    kedro_command,
    kedro_env,
    median,
    prepared_study,
    print_table,
    run_logged,
    spread,
    worker_command,
)

STUDY = ("default", "reference")
ONE_JOB = ("one job", "bare")
REFERENCE = ("--runner", "SequentialRunner")


def kedro_arm(
    project: Path, out: Path, epochs: int, *args: str, params: str = ""
) -> dict:
    """``kedro run --pipeline ptychi_baseline ARGS`` into ``out``; every job succeeds."""
    values = ",".join(
        p for p in (params, epochs_param(epochs), f"artifact_root={out}") if p
    )
    command = kedro_command(
        "run", "--pipeline", "ptychi_baseline", *args, "--params", values
    )
    wall = run_logged(command, project, out.parent / "kedro.log", kedro_env())
    manifest = json.loads((out / "reconstruction_manifest.json").read_text())
    ran = [job for job in manifest["jobs"] if job["status"] != "not_run"]
    if {job["status"] for job in ran} != {"succeeded"}:
        raise RuntimeError(f"{command}: not every job succeeded, see {out.parent}")
    return {
        "wall_s": wall,
        "jobs": len(ran),
        "reconstruction_s": sum(job["wall_time_s"] for job in ran),
        "final_loss": ran[0]["final_loss"],
    }


def bare_arm(project: Path, out: Path, epochs: int, namespace: str) -> dict:
    """The job as a bare pty-chi script with torch's default threads."""
    result = out / "result.json"
    command = worker_command(
        "bare_job.py",
        str(input_path(project, namespace)),
        str(out / "bare.npz"),
        *("--epochs", str(epochs), "--device", bare_device(), "--result", str(result)),
    )
    wall = run_logged(command, project, out.parent / "bare.log", kedro_env())
    timings = json.loads(result.read_text())
    return {
        "wall_s": wall,
        "jobs": 1,
        "reconstruction_s": timings["reconstruction_s"],
        "final_loss": timings["final_loss"],
    }


def sample(arm: str, project: Path, out: Path, args: argparse.Namespace) -> dict:
    """One run of ``arm`` into the fresh folder ``out``."""
    if arm == "default":
        return kedro_arm(project, out, args.epochs)
    if arm == "reference":
        return kedro_arm(
            project,
            out,
            args.epochs,
            *REFERENCE,
            params="ptychi_baseline.cpu_threads=1",
        )
    if arm == "one job":
        return kedro_arm(project, out, args.epochs, "--namespace", args.namespace)
    return bare_arm(project, out, args.epochs, args.namespace)


def collect(args: argparse.Namespace, project: Path) -> dict[str, list[dict]]:
    """Both pairs, ``repeats`` and ``job_repeats`` times, alternating the order."""
    samples: dict[str, list[dict]] = {arm: [] for arm in STUDY + ONE_JOB}
    plan = [(STUDY, r) for r in range(args.repeats)]
    plan += [(ONE_JOB, r) for r in range(args.job_repeats)]
    for pair, repeat in plan:
        for arm in pair if repeat % 2 == 0 else pair[::-1]:
            run_dir = args.workdir / "runners" / f"{arm.replace(' ', '_')}_{repeat}"
            shutil.rmtree(run_dir, ignore_errors=True)
            out = run_dir / "out"
            out.mkdir(parents=True)
            samples[arm].append(sample(arm, project, out, args))
            print(
                f"{arm} {repeat}: {samples[arm][-1]['wall_s']:.1f} s "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return samples


def ratios(
    samples: dict[str, list[dict]], arm: str, base: str, key: str
) -> list[float]:
    """Per-repeat ratios ``arm / base`` of ``key``."""
    return [a[key] / b[key] for a, b in zip(samples[arm], samples[base], strict=True)]


def report(samples: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """One table: every arm's medians, and the two ratios against their targets."""
    rows = []
    for arm in STUDY + ONE_JOB:
        wall = [s["wall_s"] for s in samples[arm]]
        recon = [s["reconstruction_s"] for s in samples[arm]]
        rows.append(
            [arm, samples[arm][0]["jobs"], len(wall), median(wall), spread(wall)]
            + [median(recon), f"{samples[arm][0]['final_loss']:.6g}"]
        )
    study = ratios(samples, "default", "reference", "wall_s")
    job = ratios(samples, "one job", "bare", "reconstruction_s")
    process = ratios(samples, "one job", "bare", "wall_s")
    print_table(
        f"{args.epochs} epochs per job; study wall default / reference = "
        f"{median(study):.3f} (target <= 0.6; per repeat "
        f"{', '.join(f'{r:.3f}' for r in study)}); {args.namespace} reconstruction "
        f"one job / bare = {median(job):.3f} (target <= 1.05; whole process "
        f"{median(process):.3f}); load average {os.getloadavg()[0]:.1f} at the end",
        ["arm", "jobs", "runs", "wall s", "min-max", "reconstruction s (sum)"]
        + ["final loss (first job)"],
        rows,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="study pairs")
    parser.add_argument("--job-repeats", type=int, default=3, help="one-job pairs")
    parser.add_argument(
        "--epochs",
        type=int,
        default=20,
        help=(
            "the epoch cap; below 21 the stopping rule (window 10) cannot stop a "
            "job, so every arm runs exactly this many"
        ),
    )
    parser.add_argument("--namespace", default="dose_1e4.baseline.test")
    add_study_options(parser)
    return parser.parse_args()


def main() -> None:
    """Run the four arms and print the table."""
    args = parse_args()
    project = prepared_study(args)
    report(collect(args, project), args)


if __name__ == "__main__":
    main()
