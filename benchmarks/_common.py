"""What the benchmarks share: a scratch copy of the project, subprocess timing, tables.

Every benchmark runs Kedro in a *scratch project* under its work folder: the project's
``pyproject.toml`` and ``conf/`` (base, full, logging) with an empty ``conf/local``, an
empty ``src/`` (the package is imported from its installed, editable copy) and its own
``data/``. So a developer's ``conf/local`` and ``data/`` neither change the numbers nor
get overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
BENCHMARKS = PROJECT / "benchmarks"
DEFAULT_WORKDIR = Path(os.environ.get("FLY64_BENCH_DIR", "/tmp/fly64_bench"))
CONF_ITEMS = ("base", "full", "logging.yml")  # conf/local stays empty
EMBEDDED_INPUTS = 18


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """``--workdir`` (where the scratch project lives) and ``--threads``."""
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    add_threads_option(parser)


def prepared_study(args: argparse.Namespace, env: str | None = None) -> Path:
    """Threads pinned and the machine printed; the scratch project, its study simulated."""
    apply_threads(args.threads)
    print(machine())
    project = scratch_project(args.workdir)
    ensure_embedded_study(project, env)
    return project


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: pin torch/BLAS threads in every process the benchmark starts."""
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per process (OMP_NUM_THREADS...); default: torch's own choice. "
        "On a shared machine 1 keeps a busy neighbour from stalling OpenMP barriers.",
    )


def apply_threads(threads: int | None) -> None:
    """Export the thread count before torch is imported here or in a child."""
    if threads is not None:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)


def scratch_project(workdir: Path) -> Path:
    """A runnable copy of the project's configuration under ``workdir/project``."""
    project = workdir / "project"
    (project / "src").mkdir(parents=True, exist_ok=True)
    (project / "conf" / "local").mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT / "pyproject.toml", project / "pyproject.toml")
    for item in CONF_ITEMS:
        source, target = PROJECT / "conf" / item, project / "conf" / item
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return project


def kedro_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A subprocess's environment: no inherited KEDRO_ENV, telemetry off (offline)."""
    env = {k: v for k, v in os.environ.items() if k != "KEDRO_ENV"}
    return {**env, "KEDRO_DISABLE_TELEMETRY": "1", **(extra or {})}


def kedro_command(*args: str) -> list[str]:
    """``kedro ARGS`` with this interpreter's Kedro."""
    return [sys.executable, "-m", "kedro", *args]


def epochs_param(epochs: int) -> str:
    """The ``--params`` override of the number of LSQML epochs."""
    return f"ptychi_baseline.lsqml.reconstructor_options.num_epochs={epochs}"


def run_logged(
    command: Sequence[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> float:
    """Run ``command`` with its output in ``log``; return wall seconds, raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            list(command),
            check=False,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        tail = log.read_text().splitlines()[-20:]
        raise RuntimeError(f"{' '.join(command)} exited {code}:\n" + "\n".join(tail))
    return seconds


def embedded_inputs(project: Path) -> list[Path]:
    """The study's input NPZ files in the scratch project."""
    return sorted((project / "data" / "01_raw").rglob("*.npz"))


def ensure_embedded_study(project: Path, env: str | None = None) -> float | None:
    """Simulate the embedded study once; return the seconds it took, None if cached."""
    if len(embedded_inputs(project)) >= EMBEDDED_INPUTS:
        return None
    args = ["run", "--pipeline", "simulate", *(["--env", env] if env else [])]
    return run_logged(
        kedro_command(*args), project, project / "logs" / "simulate.log", kedro_env()
    )


def input_path(project: Path, namespace: str) -> Path:
    """A job's input file in the scratch project's study tree."""
    from fly64_recon.study import Job  # noqa: PLC0415 - keeps --help fast

    job = Job.from_namespace(namespace)
    phase = "phase_c" if job.view == "baseline" else "phase_d"
    return project / "data" / "01_raw" / phase / job.input_relpath


def study_namespaces(project: Path, env: str = "local") -> list[str]:
    """Every job namespace of the scratch project's study design in ``env``."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415 - keeps --help fast

    from fly64_recon.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415
    from fly64_recon.study import StudyDesign  # noqa: PLC0415

    with warnings.catch_warnings():  # OmegaConf's resolver deprecation, not ours
        warnings.simplefilter("ignore", UserWarning)
        loader = OmegaConfigLoader(
            conf_source=str(project / "conf"), env=env, **CONFIG_LOADER_ARGS
        )
        design = StudyDesign.from_params(loader["parameters"]["study"])
    return [job.namespace for job in design.jobs()]


def bare_device() -> str:
    """The device the pipeline's ``device: auto`` picks here, for ``bare_job.py``: the
    bare arm must run where the pipeline's job runs."""
    import torch  # noqa: PLC0415 - only for the arms that need it

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_command(script: str, *args: str) -> list[str]:
    """``python benchmarks/SCRIPT ARGS``."""
    return [sys.executable, str(BENCHMARKS / script), *args]


def run_worker(
    command: Sequence[str], cwd: Path, result: Path, log: Path
) -> dict[str, Any]:
    """Run a worker (in ``cwd``) that writes its timings to ``result`` as JSON."""
    result.unlink(missing_ok=True)
    wall = run_logged(command, cwd, log, kedro_env())
    timings = json.loads(result.read_text())
    return {"process_s": wall, **timings}


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the values, for the table's noise column."""
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """A Markdown table (pastes into the README as is)."""
    cells = [[_cell(v) for v in row] for row in rows]
    print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")


def _cell(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def machine() -> str:
    """Date, CPU, cores, torch threads and GPU: the line every table is read with."""
    import torch  # noqa: PLC0415 - only for the header

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.date.today().isoformat()}; {_cpu_model()}, {os.cpu_count()} cores "
        f"(torch threads {torch.get_num_threads()}); {gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
