"""``kedro run --pipeline simulate`` in a tiny copy of the project writes a valid study."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import PROJECT_ROOT, TINY_DOSES, TINY_ENV, run_kedro

from fly64_recon.contract import read_metadata
from fly64_recon.study import Job, StudyDesign, spacing_threshold

pytestmark = pytest.mark.e2e


def kedro_run(project: Path, *args: str) -> None:
    """Run the simulate pipeline of ``project`` in its tiny environment; fail loudly."""
    source = os.pathsep.join(
        p for p in (str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH")) if p
    )
    result = run_kedro(
        project,
        *("run", "--pipeline", "simulate", "--env", TINY_ENV, *args),
        env={"PYTHONPATH": source},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def study_files(phase_c_root: Path, phase_d_root: Path) -> dict[Job, Path]:
    """Where every job's input file of the tiny design should be."""
    return {
        job: (phase_c_root if job.view == "baseline" else phase_d_root)
        / job.input_relpath
        for job in StudyDesign(doses=TINY_DOSES).jobs()
    }


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def study(tiny_kedro_project: Path) -> dict[Job, Path]:
    """Run once with the catalog's default roots."""
    kedro_run(tiny_kedro_project)
    roots = yaml.safe_load((tiny_kedro_project / "conf/base/globals.yml").read_text())
    return study_files(
        tiny_kedro_project / roots["phase_c_root"],
        tiny_kedro_project / roots["phase_d_root"],
    )


def test_run_writes_the_whole_study_tree(study, tiny_kedro_project):
    assert len(study) == 12
    missing = [str(path) for path in study.values() if not path.is_file()]
    assert missing == []
    written = set((tiny_kedro_project / "data").rglob("*.npz"))
    assert written == set(study.values())


def test_every_file_passes_the_contract(study):
    contract = pytest.importorskip("fly64_recon.contract")
    for path in study.values():
        assert contract.validate(load(path), str(path)) == [], path


def test_files_say_what_they_are(study):
    for job, path in study.items():
        arrays = load(path)
        meta = read_metadata(arrays)
        assert arrays["diffraction"].shape[1:] == (16, 16)
        assert meta["dose"] == job.dose and meta["split"] == job.split
        assert meta["source"] == "fly64_recon.simulate"
        if job.view != "baseline":
            assert meta["overlap_view"] == job.view
            assert meta["source_file"] == f"patched_{job.split}.npz"
            assert meta["spacing_threshold"] == spacing_threshold(
                meta["overlap_fraction"], 16
            )
            assert meta["n_accepted"] == len(arrays["xcoords"]) >= 5


def test_runtime_roots_and_same_bytes(study, tiny_kedro_project, tmp_path):
    other_c, other_d = tmp_path / "c", tmp_path / "d"
    kedro_run(
        tiny_kedro_project, "--params", f"phase_c_root={other_c},phase_d_root={other_d}"
    )
    again = study_files(other_c, other_d)
    for job, path in study.items():
        assert again[job].read_bytes() == path.read_bytes(), job
