"""scripts/gpu_check.sh: refusals at once, and the whole script rehearsed on the CPU at
tiny sizes, as a bare GPU machine runs it (project not installed: src/ from the
checkout, a relative PYTHONPATH kept working after the script changes folder)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SIMULATE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout=60):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


def test_an_unknown_mode_is_refused_before_anything_runs():
    result = run("full", "fastest")
    assert result.returncode == 2
    assert (
        "unknown mode 'fastest' (smoke, embedded, full, pool K, dask)" in result.stderr
    )
    assert result.stdout == ""


def test_pool_needs_its_workers_per_gpu():
    result = run("pool", "embedded")
    assert result.returncode == 2
    assert "pool needs the workers per GPU: a whole number or auto" in result.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here")
def test_without_a_gpu_it_stops_and_says_why():
    result = run("dask")
    assert result.returncode == 2
    assert "no GPU visible: nvidia-smi is not installed" in result.stderr
    assert "gpu_check " not in result.stdout  # no header: nothing was started


# Loaded by every Python process that finds it on PYTHONPATH: leaves its folder.
MARK_PROCESS = """\
import os
mark = os.path.join(os.environ["GPU_CHECK_TEST_MARKS"], str(os.getpid()))
with open(mark, "w") as handle:
    handle.write(os.getcwd())
"""


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory):
    """Every mode but dask, on the CPU, a tiny study standing in for both scales."""
    root = tmp_path_factory.mktemp("gpu_check")
    tiny = root / "tiny"
    tiny.mkdir()
    study = {"doses": [1000.0, 10000.0], "views": ["baseline", "sparse"]}
    (tiny / "globals.yml").write_text(
        yaml.safe_dump({"study": {**study, "splits": ["test"]}})
    )
    (tiny / "parameters_simulate.yml").write_text(
        yaml.safe_dump({"simulate": TINY_SIMULATE})
    )
    (root / "relative").mkdir()
    (root / "relative" / "sitecustomize.py").write_text(MARK_PROCESS)
    marks = root / "marks"
    marks.mkdir()
    env = {
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_CONF": str(tiny),
        "GPU_CHECK_EMBEDDED_ENV": "tiny",
        "GPU_CHECK_FULL_ENV": "tiny",
        "GPU_CHECK_EPOCHS": "3",
        "GPU_CHECK_POOL_EPOCHS": "2",
        "GPU_CHECK_TIMEOUT": "300",
        "OUT": str(root / "out"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": "relative",
        "GPU_CHECK_TEST_MARKS": str(marks),
    }
    result = run(
        *("smoke", "embedded", "full", "pool", "2", "pool", "auto"),
        cwd=root,
        env=env,
        timeout=900,
    )
    return result, root / "out" / "gpu_check", marks


@pytest.mark.e2e
def test_the_rehearsal_runs_every_step_and_ends_with_their_table(rehearsal):
    result, work, _ = rehearsal

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = (work / "results.md").read_text().splitlines()[2:]
    steps = [row.split("|")[1].strip() for row in rows]
    assert steps == [
        "smoke",
        "embedded",
        "full_job",
        "dose_1e4.baseline.test pipeline vs bare",
        "pool_2",
        "pool_auto",
    ]
    assert "Results (" in result.stdout and rows[-1] in result.stdout
    assert (
        "smoke: rerun: " in result.stdout and "same as the first: yes" in result.stdout
    )
    assert "4 jobs (0 failed) on cpu" in result.stdout
    assert "Phase MAE (rad), mean over splits" in result.stdout
    assert "pipeline / bare = " in result.stdout
    assert "predicted at 100 epochs" in result.stdout
    assert (work / "logs" / "embedded.log").exists()  # logs under $OUT


@pytest.mark.e2e
def test_a_relative_pythonpath_still_works_in_the_scratch_project(rehearsal):
    _, work, marks = rehearsal

    folders = [Path(mark.read_text()) for mark in marks.iterdir()]
    # The kedro runs start in the scratch project, where "relative" is not: they found
    # it all the same.
    assert folders.count(work / "project") >= 5
    assert (work / "project" / "conf" / "tiny" / "globals.yml").exists()
