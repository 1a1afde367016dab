"""The real pipelines on a tiny study: ``kedro run``, then what a scientist does next."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, TINY_ENV, make_tiny_project, run_kedro
from nbclient import NotebookClient

from fly64_recon.study import StudyDesign

pytestmark = pytest.mark.e2e

DOSES = (1000.0, 10000.0, 100000.0)
EPOCHS = 12
ARTIFACTS = "data/07_model_output/ptychi_baseline"
CONSOLE = "kedro_run_console.txt"


def kedro(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``kedro <args>`` in the project's tiny environment, as a user would type it
    (its output read at 120 columns, without a terminal)."""
    env = {"KEDRO_ENV": TINY_ENV, "COLUMNS": "120"}
    result = run_kedro(project, *args, env=env, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def manifest(project: Path) -> dict[str, dict]:
    path = project / ARTIFACTS / "reconstruction_manifest.json"
    return {job["namespace"]: job for job in json.loads(path.read_text())["jobs"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny study after one plain ``kedro run`` (simulate, reconstruct, evaluate)."""
    epochs = {"lsqml": {"reconstructor_options": {"num_epochs": EPOCHS}}}
    root = make_tiny_project(
        tmp_path_factory.mktemp("e2e"), DOSES, {"ptychi_baseline": epochs}
    )
    done = kedro(root, "run")
    (root / CONSOLE).write_text(done.stdout + done.stderr)
    return root


def test_the_console_is_short_and_ends_with_the_summary(project):
    """Progress and summary, no Kedro INFO lines, no warnings, and a log of the rest."""
    lines = (project / CONSOLE).read_text().splitlines()
    assert len(lines) <= 200
    assert "WARNING" not in "\n".join(lines) and "INFO" not in "\n".join(lines)
    assert lines[0] == "Running 18 reconstruction job(s)"
    assert sum(line.startswith("[") for line in lines) == 18
    start = next(i for i, line in enumerate(lines) if line.startswith("Run finished"))
    summary = lines[start:]
    assert summary[0].endswith(": 18 job(s) on cpu: 18 succeeded.")
    table = summary[
        summary.index("view      dose 1e3         dose 1e4         dose 1e5") :
    ]
    assert [row.split()[0] for row in table[1:4]] == ["baseline", "dense", "sparse"]
    for row in table[1:4]:  # per dose, a number and its null reference in brackets
        cells = row.split()[1:]
        assert len(cells) == 6 and all(c.startswith("[") for c in cells[1::2])
    # 12 epochs stop every job of the tiny study at the cap: flagged, a line each
    assert "Flagged jobs (18; every flag in the study report):" in summary
    assert "  dose_1e4.dense.test: not converged: stopped by the epoch cap" in summary
    places = {line.split()[0]: line.split()[1] for line in summary[-3:]}
    assert places["report"] == "data/08_reporting/study_summary.md"
    assert places["manifest"] == f"{ARTIFACTS}/reconstruction_manifest.json"
    assert (project / places["log"]).read_text().count("Running node: ") >= 18 * 5


def test_every_job_succeeds_and_says_what_it_did(project):
    jobs = manifest(project)
    design = StudyDesign(doses=DOSES)
    assert list(jobs) == [job.namespace for job in design.jobs()]
    for job in design.jobs():
        entry = jobs[job.namespace]
        assert entry["status"] == "succeeded", entry
        assert entry["num_epochs"] == EPOCHS and entry["device"] == "cpu"
        assert entry["n_patterns"] == entry["n_patterns_total"] > 0
        assert len(entry["input_sha256"]) == 64
        folder = project / ARTIFACTS / job.output_relpath
        for name in (
            "ptychi_reconstruction.npz",
            "product.h5",
            "reconstruction.png",
            "job.json",
        ):
            assert (folder / name).is_file(), folder / name
        assert "Epoch" in (folder / "ptychi.log").read_text()


def test_phase_error_falls_with_dose(project):
    """The science check: if the baseline does not improve with dose, upstream is wrong."""
    table = pd.read_csv(project / "data/08_reporting/metrics.csv")
    baseline = table[(table.view == "baseline") & (table.metric == "mae")]
    error = baseline.groupby("dose")["phase"].mean()
    assert error[1000.0] > error[100000.0], error


def test_the_study_summary_is_written(project):
    reporting = project / "data/08_reporting"
    report = (reporting / "study_summary.md").read_text()
    assert "dose" in report and "sparse" in report
    for figure in ("phase_grid.png", "metrics_vs_dose.png", "convergence.png"):
        assert (reporting / figure).stat().st_size > 1000


def test_one_dose_reruns_exactly_its_six_jobs(project):
    before = manifest(project)

    kedro(
        project,
        "run",
        "--pipeline",
        "ptychi_baseline",
        "--namespace",
        "dose_1e4",
        "--params",
        "ptychi_baseline.lsqml.reconstructor_options.num_epochs=3",
    )

    after = manifest(project)
    rerun = {name for name in after if after[name] != before[name]}
    assert rerun == {name for name in after if name.startswith("dose_1e4.")}
    assert len(rerun) == 6
    assert all(after[name]["num_epochs"] == 3 for name in rerun)


def test_an_unchanged_rerun_is_cached(project):
    kedro(project, "run", "--pipeline", "ptychi_baseline", "--namespaces", "dose_1e3")

    jobs = manifest(project)
    assert {jobs[n]["status"] for n in jobs if n.startswith("dose_1e3.")} == {"cached"}


def test_a_missing_view_is_skipped_and_a_broken_file_fails_the_run(project, tmp_path):
    study = tmp_path / "study"
    for phase in ("phase_c", "phase_d"):
        shutil.copytree(project / "data/01_raw" / phase, study / phase)
    (study / "phase_d/dose_100000/sparse/sparse_test.npz").unlink()
    (study / "phase_c/dose_1000/patched_train.npz").write_bytes(b"not a zip")
    out = tmp_path / "out"

    result = kedro(
        project,
        "run",
        "--pipeline",
        "ptychi_baseline",
        "--namespaces",
        "dose_1e3.baseline,dose_1e5.sparse",
        "--params",
        f"phase_c_root={study / 'phase_c'},phase_d_root={study / 'phase_d'},"
        f"artifact_root={out}",
        check=False,
    )

    assert result.returncode != 0
    assert "1 of 4 reconstruction job(s) failed" in result.stdout + result.stderr
    jobs = {job["namespace"]: job for job in manifest_at(out)}
    assert jobs["dose_1e5.sparse.test"]["status"] == "skipped"
    assert "sparse_test.npz" in jobs["dose_1e5.sparse.test"]["reason"]
    assert jobs["dose_1e3.baseline.train"]["status"] == "failed"
    assert "patched_train.npz" in jobs["dose_1e3.baseline.train"]["reason"]
    assert jobs["dose_1e3.baseline.test"]["status"] == "succeeded"
    assert jobs["dose_1e5.sparse.train"]["status"] == "succeeded"
    skips = json.loads((out / "skip_summary.json").read_text())
    assert skips["skipped_count"] == 1


def test_dry_run_plans_every_job_and_reconstructs_nothing(project, tmp_path):
    out = tmp_path / "dry"

    kedro(
        project,
        "run",
        "--pipeline",
        "ptychi_baseline",
        "--params",
        f"ptychi_baseline.dry_run=true,artifact_root={out}",
    )

    jobs = manifest_at(out)
    assert {job["status"] for job in jobs} == {"planned"}
    assert not list(out.rglob("*.npz"))


def manifest_at(root: Path) -> list[dict]:
    return json.loads((root / "reconstruction_manifest.json").read_text())["jobs"]


def test_the_notebook_runs_top_to_bottom(project):
    notebook = nbformat.read(PROJECT_ROOT / "notebooks/explore_results.ipynb", 4)
    (project / "notebooks").mkdir(exist_ok=True)
    os.environ["KEDRO_ENV"] = TINY_ENV
    try:
        NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(project / "notebooks")}},
        ).execute()
    finally:
        del os.environ["KEDRO_ENV"]
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_kedro_viz_build_shows_the_namespaces(project):
    kedro(project, "viz", "build")

    graph = json.loads((project / "build/api/main").read_text())
    modular = graph["modular_pipelines"]
    children = {child["id"] for child in modular["dose_1e4"]["children"]}
    assert {"dose_1e4.baseline", "dose_1e4.dense", "dose_1e4.sparse"} <= children
    dense = {child["id"] for child in modular["dose_1e4.dense"]["children"]}
    assert {"dose_1e4.dense.train", "dose_1e4.dense.test"} <= dense
    tasks = {n["full_name"]: n for n in graph["nodes"] if n["type"] == "task"}
    for step in ("validate", "reconstruct", "record", "evaluate"):
        node = tasks[f"dose_1e4.dense.test.{step}"]
        assert node["modular_pipelines"] == ["dose_1e4.dense.test"]
