"""One LSQML job through the pipeline versus the same job as a bare pty-chi script.

Usage (from the project root)::

    python benchmarks/pipeline_overhead.py [--namespace dose_1e4.dense.test]
        [--epochs 20] [--repeats 3] [--workdir /tmp/fly64_bench] [--env full]

Three arms, each a fresh Python process per sample, interleaved (the order rotates every
repeat), same input file, options, epochs and device:

* ``kedro``: ``bootstrap_project`` + ``KedroSession.create`` + ``session.run(pipeline
  ptychi_baseline, namespaces=[NS])`` + close: configuration, catalog, the pipeline
  built from the study design, hooks, validate (read + sha256 + parse + DATA-001),
  cache check, LSQML, the job folder (compressed NPZ with provenance, ptychi.log,
  job.json), reloading it, the PNG figure, the manifest upsert.
* ``nodes``: the same node functions with the same catalog datasets, called by hand
  (catalog creation reported apart as ``setup``); gives the per-step breakdown.
* ``bare``: ``benchmarks/bare_job.py``: np.load + conversion + LSQML + np.savez_compressed.

The clock starts after the imports (torch, pty-chi, Kedro, the project) in every arm;
``study_vs_subprocess.py`` counts imports. ``reconstruction`` is the same span in every
arm: pty-chi task build + epochs (``wall_time_s`` of the job record). Each sample writes
to a fresh artifact folder, so the pipeline's cache never short-cuts a job.

``--env full`` measures a full-scale job (conf/full's study, simulated once in the work
folder: give it its own ``--workdir``, the two studies share the data paths).
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
    bare_device,
    input_path,
    machine,
    median,
    peak_rss_mib,
    prepared_study,
    print_table,
    run_worker,
    spread,
    worker_command,
)

ARMS = ("kedro", "nodes", "bare")
INCLUDES = {
    "kedro": "session + runner + 3 nodes + datasets + hooks",
    "nodes": "3 node functions + catalog datasets",
    "bare": "np.load + LSQML + np.savez_compressed",
}


def runtime_params(artifact_root: Path, epochs: int) -> dict[str, Any]:
    """The run's overrides: a fresh artifact root and the number of epochs."""
    lsqml = {"reconstructor_options": {"num_epochs": epochs}}
    return {"artifact_root": str(artifact_root), "ptychi_baseline": {"lsqml": lsqml}}


def import_everything() -> None:
    """Import what any arm's clock must not count."""
    import matplotlib.pyplot  # noqa: F401, PLC0415
    import ptychi.api.task  # noqa: F401, PLC0415
    from kedro.framework.session import KedroSession  # noqa: F401, PLC0415

    import fly64_recon.pipeline_registry  # noqa: F401, PLC0415
    import fly64_recon.pipelines.ptychi_baseline.pipeline  # noqa: F401, PLC0415
    import fly64_recon.pipelines.simulate.pipeline  # noqa: F401, PLC0415


def kedro_arm(project: Path, out: Path, namespace: str, epochs: int, env: str) -> dict:
    """The namespace through a Kedro session, as ``kedro run --namespaces`` runs it."""
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    started = time.perf_counter()
    bootstrap_project(project)
    params = runtime_params(out, epochs)
    with KedroSession.create(
        project_path=project, env=env, runtime_params=params
    ) as session:
        session.run(pipeline_names=["ptychi_baseline"], namespaces=[namespace])
    return {"job_s": time.perf_counter() - started}


def nodes_arm(project: Path, out: Path, namespace: str, epochs: int, env: str) -> dict:
    """The three node functions with the catalog's datasets, each step timed."""
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    from fly64_recon.pipelines.ptychi_baseline import nodes  # noqa: PLC0415
    from fly64_recon.study import Job  # noqa: PLC0415

    marks: list[tuple[str, float]] = [("", time.perf_counter())]

    def mark(step: str) -> None:
        marks.append((step, time.perf_counter()))

    bootstrap_project(project)
    params = runtime_params(out, epochs)
    with KedroSession.create(
        project_path=project, env=env, runtime_params=params
    ) as session:
        catalog = session.load_context().catalog
        job = Job.from_namespace(namespace)
        baseline = catalog.load("params:ptychi_baseline")
        mark("setup")
        source = catalog.load(f"{job.input_dataset}@source")
        checked = nodes.validate_input(source, baseline, job)
        mark("validate")
        previous = catalog.load(f"{namespace}.previous_job_artifacts")
        artifacts = nodes.reconstruct(checked, previous)
        mark("reconstruct")
        catalog.save(f"{namespace}.job_artifacts", artifacts)
        mark("save job folder")
        reloaded = catalog.load(f"{namespace}.job_artifacts")
        figure, entry = nodes.record(reloaded)
        mark("reload + record")
        catalog.save(f"{namespace}.reconstruction_plot", figure)
        mark("save figure")
        catalog.save(f"{namespace}.manifest_entry", entry)
        mark("save manifest")
    steps = {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}
    return {"job_s": marks[-1][1] - marks[1][1], "steps": steps}


def job_record(out: Path, namespace: str) -> dict[str, Any]:
    """The job record the pipeline wrote; a failed job fails the benchmark."""
    from fly64_recon.study import Job  # noqa: PLC0415

    record = json.loads(
        (out / Job.from_namespace(namespace).output_relpath / "job.json").read_text()
    )
    if record["status"] != "succeeded":
        raise RuntimeError(f"{namespace}: {record['status']}: {record['reason']}")
    return record


def worker(args: argparse.Namespace) -> None:
    """One sample of the kedro or nodes arm, in this (fresh) process."""
    import_everything()
    arm = kedro_arm if args.worker == "kedro" else nodes_arm
    cpu_started = time.process_time()
    timings = arm(args.project, args.out, args.namespace, args.epochs, args.env)
    timings["job_cpu_s"] = time.process_time() - cpu_started
    record = job_record(args.out, args.namespace)
    timings["reconstruction_s"] = record["wall_time_s"]
    timings["final_loss"] = record["final_loss"]
    timings["peak_rss_mib"] = peak_rss_mib()
    args.result.write_text(json.dumps(timings))


def sample(arm: str, project: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run one arm once in a fresh process, with a fresh output folder."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result, log = run_dir / "result.json", run_dir / "run.log"
    if arm == "bare":
        command = worker_command(
            "bare_job.py",
            str(input_path(project, args.namespace)),
            str(run_dir / "out" / "reconstruction.npz"),
            f"--epochs={args.epochs}",
            f"--device={bare_device()}",
            f"--result={result}",
        )
    else:
        command = worker_command(
            "pipeline_overhead.py",
            f"--worker={arm}",
            f"--project={project}",
            f"--out={run_dir / 'out'}",
            f"--namespace={args.namespace}",
            f"--epochs={args.epochs}",
            f"--env={args.env}",
            f"--result={result}",
        )
    return run_worker(command, project, result, log)


def collect(args: argparse.Namespace, project: Path) -> dict[str, list[dict]]:
    """``repeats`` samples of every arm, the order rotated each repeat."""
    samples: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):
        order = ARMS[repeat % 3 :] + ARMS[: repeat % 3]
        for arm in order:
            run_dir = args.workdir / "overhead" / f"{repeat}_{arm}"
            samples[arm].append(sample(arm, project, run_dir, args))
            print(f"repeat {repeat} {arm}: {samples[arm][-1]['job_s']:.2f} s")
    return samples


def saved_samples(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The samples an earlier run left in the work folder (``--report-only``)."""
    samples: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):
        for arm in ARMS:
            result = args.workdir / "overhead" / f"{repeat}_{arm}" / "result.json"
            samples[arm].append(json.loads(result.read_text()))
    return samples


def paired_ratios(samples: dict[str, list[dict]], arm: str, key: str) -> list[float]:
    """Per-repeat ratio arm / bare (neighbours in time share the machine's load)."""
    return [a[key] / b[key] for a, b in zip(samples[arm], samples["bare"], strict=True)]


def rest_seconds(samples: list[dict]) -> float:
    """Median time of a sample spent outside the reconstruction."""
    return median([s["job_s"] - s["reconstruction_s"] for s in samples])


def report(samples: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """The overhead table and the nodes arm's step breakdown."""
    every = [s["reconstruction_s"] for arm in ARMS for s in samples[arm]]
    common = median(every)
    bare_rest = rest_seconds(samples["bare"])
    rows = []
    for arm in ARMS:
        job = [s["job_s"] for s in samples[arm]]
        recon = [s["reconstruction_s"] for s in samples[arm]]
        ratio = median(paired_ratios(samples, arm, "job_s"))
        rest = rest_seconds(samples[arm])
        components = (common + rest) / (common + bare_rest)
        rss = median([s["peak_rss_mib"] for s in samples[arm]])
        cpu_ratio = median(paired_ratios(samples, arm, "job_cpu_s"))
        losses = sorted({f"{s['final_loss']:.6g}" for s in samples[arm]})
        rows.append(
            [arm, INCLUDES[arm], median(job), spread(job), median(recon), rest]
            + [ratio, cpu_ratio, components, ", ".join(losses), f"{rss:.0f}"]
        )
    print_table(
        f"Pipeline overhead: {args.namespace} ({args.env}), {args.epochs} epochs, CPU, "
        f"{args.repeats} repeats (medians; ratio = median of per-repeat ratios)",
        ["arm", "includes", "job s", "min-max", "reconstruction s", "rest s"]
        + ["ratio vs bare (wall)", "ratio (CPU time)", "ratio (components)"]
        + ["final loss", "peak RSS MiB"],
        rows,
    )
    print(
        f"\nratio (components) = (R + rest of the arm) / (R + rest of bare), with R "
        f"= {common:.2f} s, the median reconstruction over all {len(every)} samples: "
        "the fixed costs, with the noise of the reconstruction taken out."
    )
    steps = samples["nodes"][0]["steps"]
    print_table(
        "Where the nodes arm spends its time (median s)",
        ["step", "seconds"],
        [[k, median([s["steps"][k] for s in samples["nodes"]])] for k in steps],
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="dose_1e4.dense.test")
    parser.add_argument("--epochs", type=int, default=20, help="conf/base: 20")
    parser.add_argument(
        "--env",
        default="local",
        help="Kedro environment of the study (full: conf/full)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    add_study_options(parser)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="print the tables from the samples in --workdir, run nothing",
    )
    parser.add_argument("--worker", choices=("kedro", "nodes"), help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Benchmark, or be one sample of a benchmark (``--worker``)."""
    args = parse_args()
    if args.worker:
        worker(args)
        return
    if args.report_only:
        print(machine())
        report(saved_samples(args), args)
        return
    project = prepared_study(args, args.env)
    report(collect(args, project), args)


if __name__ == "__main__":
    main()
