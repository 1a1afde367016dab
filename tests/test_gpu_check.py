"""scripts/gpu_check.sh refuses what it cannot do, at once and with a reason."""

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_mode_is_refused_before_anything_runs():
    result = run("full", "fastest")
    assert result.returncode == 2
    assert "unknown mode 'fastest' (embedded, full, concurrent, dask)" in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is here")
def test_without_a_gpu_it_stops_and_says_why():
    result = run("dask")
    assert result.returncode == 2
    assert "no GPU visible: nvidia-smi is not installed" in result.stderr
    assert "gpu_check " not in result.stdout  # no header: nothing was started
