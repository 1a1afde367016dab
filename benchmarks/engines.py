"""Every pty-chi engine on one job of the embedded study: time and agreement with LSQML.

Usage (from the project root)::

    python benchmarks/engines.py [--namespace dose_1e4.baseline.test]
        [--engines LSQML EPIE RPIE DM ...] [--epochs 20] [--probe-modes 1]
        [--device auto] [--threads 1] [--workdir /tmp/fly64_bench]

Each engine runs in a fresh Python process through the job's ``validate_input`` and
``reconstruct`` nodes with conf/base's ``ptychi_baseline`` parameters (that engine's
block, its ``num_epochs`` set to ``--epochs`` when given; the stopping rule as
configured), exactly as a ``kedro run`` job would. The clock is the record's
``wall_time_s`` (task build + epochs). Per engine the table gives the epochs run, why
it stopped, seconds per position-epoch, the phase MAE against the ground truth as a
multiple of the null reference (a flat object), and the correlation of its phase with
LSQML's on the job's illumination mask after registration (``metrics.align``: shift,
phase offset and ramp, amplitude scale).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    add_study_options,
    input_path,
    prepared_study,
    print_table,
    run_worker,
    worker_command,
)

ENGINES = ("LSQML", "PIE", "EPIE", "RPIE", "DM", "RAAR", "BH", "AD_PTYCHO")
REFERENCE = "LSQML"
UPSAMPLE = 20


def engine_params(project: Path, args: argparse.Namespace) -> dict[str, Any]:
    """conf/base's ``ptychi_baseline`` with this engine, epochs, modes and device."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from fly64_recon.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415

    loader = OmegaConfigLoader(
        conf_source=str(project / "conf"), env="local", **CONFIG_LOADER_ARGS
    )
    params: dict[str, Any] = dict(loader["parameters"]["ptychi_baseline"])
    key = args.engine.lower()
    block = dict(params.get(key) or {})
    if args.epochs is not None:
        block["reconstructor_options"] = {
            **(block.get("reconstructor_options") or {}),
            "num_epochs": args.epochs,
        }
    return {
        **params,
        "engine": args.engine,
        key: block,
        "probe_modes": args.probe_modes,
        "device": args.device,
    }


def worker(args: argparse.Namespace) -> None:
    """One engine: validate + reconstruct in this (fresh) process."""
    from fly64_recon.datasets import JobArtifacts, NPZSource  # noqa: PLC0415
    from fly64_recon.pipelines.ptychi_baseline import nodes  # noqa: PLC0415
    from fly64_recon.study import Job  # noqa: PLC0415

    params = engine_params(args.project, args)
    job = Job.from_namespace(args.namespace)
    checked = nodes.validate_input(NPZSource(str(args.input)), params, job)
    artifacts = nodes.reconstruct(checked, JobArtifacts({}))
    record = artifacts.record
    if record["status"] != "succeeded":
        raise RuntimeError(f"{args.engine}: {record['status']}: {record['reason']}")
    np.save(args.result.with_suffix(".npy"), artifacts.arrays["reconstructed_object"])
    keys = ("wall_time_s", "n_patterns", "epochs_run", "stop_reason", "device")
    keys += ("probe_power_rescale", "final_loss")
    result = {key: record[key] for key in keys}
    result["probe_shape"] = list(artifacts.arrays["reconstructed_probe"].shape)
    args.result.write_text(json.dumps(result))


def run_engine(engine: str, source: Path, args: argparse.Namespace) -> dict:
    """One engine in a fresh process; its timings and its object."""
    run_dir = args.workdir / "engines" / engine
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result = run_dir / "result.json"
    command = worker_command(
        "engines.py",
        "--worker",
        f"--project={args.project}",
        f"--input={source}",
        f"--namespace={args.namespace}",
        f"--engine={engine}",
        f"--probe-modes={args.probe_modes}",
        f"--device={args.device}",
        f"--result={result}",
        *([f"--epochs={args.epochs}"] if args.epochs is not None else []),
    )
    found = run_worker(command, args.project, result, run_dir / "log")
    found["object"] = np.load(result.with_suffix(".npy"))
    return found


def phase_correlation(image: np.ndarray, reference: np.ndarray, mask) -> float:
    """Correlation of the phases on the mask after registering ``image`` onto
    ``reference`` (shift, phase offset and ramp, amplitude scale)."""
    from fly64_recon.science import metrics as m  # noqa: PLC0415

    alignment, aligned = m.align(image, reference, mask, UPSAMPLE)
    lit = m.crop(mask, alignment.region)
    target = m.crop(reference, alignment.region)
    _, (ours, theirs) = m.amplitude_and_phase(target, aligned)
    return float(np.corrcoef(ours[lit], theirs[lit])[0, 1])


def report(results: dict[str, dict], source: Path, args: argparse.Namespace) -> None:
    """One row per engine."""
    from fly64_recon.datasets import NPZSource  # noqa: PLC0415
    from fly64_recon.science import metrics as m  # noqa: PLC0415
    from fly64_recon.science.scoring import TRUTH_MEMBERS, job_footing  # noqa: PLC0415

    members = NPZSource(str(source)).load_members(TRUTH_MEMBERS)
    mask = job_footing(members, None, 0.1).mask
    truth = members["objectGuess"]
    reference = results.get(REFERENCE, {}).get("object")
    rows = []
    for engine, found in results.items():
        scores = m.compare(found["object"], truth, mask, UPSAMPLE)
        position_epochs = found["n_patterns"] * found["epochs_run"]
        rows.append(
            [
                engine,
                found["epochs_run"],
                found["stop_reason"],
                f"{found['wall_time_s']:.1f}",
                f"{found['wall_time_s'] / position_epochs * 1000:.2f}",
                f"{scores['phase']['mae'] / scores['null']['phase']['mae']:.2f}",
                "-"
                if reference is None
                else f"{phase_correlation(found['object'], reference, mask):.3f}",
                "-"
                if found["probe_power_rescale"] is None
                else f"{found['probe_power_rescale']:.3g}",
            ]
        )
    first = next(iter(results.values()))
    print_table(
        f"Engines on {args.namespace} ({first['n_patterns']} positions, device "
        f"{first['device']}, epochs {args.epochs or 'conf/base'}, probe modes "
        f"{args.probe_modes})",
        ["engine", "epochs run", "stopped", "reconstruction s"]
        + ["ms/position-epoch", "phase MAE / null", f"phase corr. with {REFERENCE}"]
        + ["probe power x"],
        rows,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="dose_1e4.baseline.test")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--epochs", type=int, help="default: conf/base's cap")
    parser.add_argument("--probe-modes", type=int, default=1)
    parser.add_argument("--device", default="auto")
    add_study_options(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Every engine in turn, or one (``--worker``)."""
    args = parse_args()
    if args.worker:
        worker(args)
        return
    args.project = prepared_study(args)
    source = input_path(args.project, args.namespace)
    results = {}
    for engine in args.engines:
        results[engine] = run_engine(engine, source, args)
        print(f"{engine}: {results[engine]['wall_time_s']:.1f} s", flush=True)
    report(results, source, args)


if __name__ == "__main__":
    main()
