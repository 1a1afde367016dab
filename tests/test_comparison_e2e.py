"""``kedro run --pipeline comparison`` on a tiny study with stand-in models of its truth."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT, TINY_ENV, make_tiny_project, run_kedro
from IPython.display import Markdown
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from scipy import ndimage

from fly64_recon.datasets import NPZSource, npz_bytes
from fly64_recon.pipeline_registry import register_pipelines
from fly64_recon.science import metrics as m
from fly64_recon.science.scoring import TRUTH_MEMBERS, job_footing
from fly64_recon.study import Job, StudyDesign

pytestmark = pytest.mark.e2e

DESIGN = {"views": ["baseline", "dense"], "splits": ["test"]}
STUDY = StudyDesign(doses=(100000.0,), views=("baseline", "dense"), splits=("test",))
BASELINE_JOB, DENSE_JOB = STUDY.jobs()
ARTIFACTS = "data/07_model_output/ptychi_baseline"
EPOCHS = {"lsqml": {"reconstructor_options": {"num_epochs": 6}}}
# The same study with another engine, in its own artifact_root (docs/engines.md).
EPIE_ARTIFACTS = "data/07_model_output/epie"
EPIE_RUN = (
    "ptychi_baseline.engine=EPIE,ptychi_baseline.epie.reconstructor_options."
    f"num_epochs=6,artifact_root={EPIE_ARTIFACTS}"
)
MARGIN = 12  # px around the lit region's bounding box: more than the shift's padding


def kedro(project: Path, *args: str) -> str:
    """``kedro <args>`` in the tiny environment; the run must succeed; its console."""
    result = run_kedro(
        project, *args, env={"KEDRO_ENV": TINY_ENV, "COLUMNS": "120"}, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def blurred(image: np.ndarray) -> np.ndarray:
    """A stand-in reconstruction: the truth, a little blurred."""
    smooth = ndimage.gaussian_filter(image.real, 0.6) + 1j * ndimage.gaussian_filter(
        image.imag, 0.6
    )
    return smooth.astype(np.complex64)


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(npz_bytes(arrays))


def write_models(project: Path, job: Job) -> None:
    """The job's stand-ins: full grid, an offset crop, and a file per rule case."""
    source = NPZSource(str(project / "data/01_raw/phase_c" / job.input_relpath))
    if job.view != "baseline":
        source = NPZSource(str(project / "data/01_raw/phase_d" / job.input_relpath))
    members = source.load_members(TRUTH_MEMBERS)
    used = NPZSource(
        str(project / ARTIFACTS / job.output_relpath / "ptychi_reconstruction.npz")
    ).load_members(["pattern_index"])["pattern_index"]
    y0, y1, x0, x1 = m.mask_region(job_footing(members, used, 0.1).mask)
    shape = members["objectGuess"].shape
    top, left = max(y0 - MARGIN, 0), max(x0 - MARGIN, 0)
    bottom, right = min(y1 + MARGIN, shape[0]), min(x1 + MARGIN, shape[1])
    stand_in = blurred(members["objectGuess"])
    models = project / "models"
    name = f"{job.dose_dir}/{job.view}_{job.split}.npz"
    write(models / "full" / name, {"reconstructed_object": stand_in})
    write(
        models / "crop" / name,
        {
            "reconstructed_object": stand_in[top:bottom, left:right],
            "offset": np.array([top, left]),
        },
    )
    if job.view == "baseline":  # the others have no file for the dense job
        write(models / "partial" / name, {"reconstructed_object": stand_in})
    broken = {"amplitude": np.ones(shape, dtype=np.int16), "phase": np.zeros(shape)}
    write(
        models / "broken" / name,
        broken if job.view == "dense" else {"reconstructed_object": stand_in},
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Baselines of a 2-job study and their evaluation, stand-in models, then
    ``--pipeline comparison``."""
    root = make_tiny_project(
        tmp_path_factory.mktemp("comparison"),
        STUDY.doses,
        {"ptychi_baseline": EPOCHS},
        design=DESIGN,
    )
    kedro(root, "run", "--pipelines", "simulate,ptychi_baseline,evaluation")
    kedro(root, "run", "--pipeline", "ptychi_baseline", "--params", EPIE_RUN)
    for job in STUDY.jobs():
        write_models(root, job)
    globals_file = root / "conf" / TINY_ENV / "globals.yml"
    declared = yaml.safe_load(globals_file.read_text())
    declared["comparison_models"] = {
        name: f"models/{name}/dose_{{dose}}/{{view}}_{{split}}.npz"
        for name in ("full", "crop", "partial", "broken")
    }
    declared["comparison_models"]["copy"] = (
        f"{root}/{ARTIFACTS}/dose_{{dose}}/{{view}}/{{split}}/ptychi_reconstruction.npz"
    )
    declared["comparison_models"]["epie"] = (
        f"{EPIE_ARTIFACTS}/dose_{{dose}}/{{view}}/{{split}}/ptychi_reconstruction.npz"
    )
    globals_file.write_text(yaml.safe_dump(declared))
    console = kedro(root, "run", "--pipeline", "comparison")
    (root / "comparison_console.txt").write_text(console)
    return root


def table(project: Path) -> pd.DataFrame:
    return pd.read_csv(project / "data/08_reporting/comparison_metrics.csv")


def scores(rows: pd.DataFrame, model: str) -> pd.DataFrame:
    chosen = rows[rows.model == model].set_index(["view", "metric"])
    return chosen[["amplitude", "phase", "null_amplitude", "null_phase"]].sort_index()


def test_every_output_is_written(project):
    reporting = project / "data/08_reporting"
    for job in STUDY.jobs():
        folder = project / ARTIFACTS / job.output_relpath
        assert (folder / "comparison.png").stat().st_size > 1000
        document = json.loads((folder / "comparison.json").read_text())
        assert document["namespace"] == job.namespace
    assert (reporting / "comparison_vs_dose.png").stat().st_size > 1000
    report = (reporting / "comparison_summary.md").read_text()
    assert "| 1e5 | dense | test | `full` |" in report
    assert "`partial`: missing: no file at" in report
    assert "`broken`: failed:" in report


def test_the_console_ends_with_the_models_against_pty_chi(project):
    lines = (project / "comparison_console.txt").read_text().strip().splitlines()

    assert lines[0].startswith("Run finished in ")
    assert lines[0].endswith("models compared with the pty-chi baseline.")
    start = lines.index(
        "Models against pty-chi: phase MAE, model / pty-chi, mean over splits "
        "(below 1: the model is better)"
    )
    table = lines[start + 1 : start + 14]
    full = [line.split() for line in table if line.startswith("full")]
    assert [row[:2] for row in full] == [["full", "baseline"], ["full", "dense"]]
    assert all(float(row[2].rstrip("x")) < 1 for row in full)  # the stand-in is better
    assert "partial: no file for 1 job(s): dose_1e5.dense.test" in lines
    assert "broken: a file that could not be scored for 1 job(s): " in "\n".join(lines)
    assert not any("WARNING" in line or "Phase MAE (rad)" in line for line in lines)
    assert any(line.startswith("comparison") for line in lines[-4:])


def test_the_stand_in_scores_better_than_the_baseline(project):
    rows = table(project)
    mae = rows[rows.metric == "mae"].set_index(["view", "model"])["phase"]

    for view in ("baseline", "dense"):
        assert mae[view, "full"] < mae[view, "ptychi"], mae


def test_both_framings_score_the_same(project):
    rows = table(project)

    pd.testing.assert_frame_equal(
        scores(rows, "crop"), scores(rows, "full"), rtol=1e-6, atol=1e-9
    )


def test_a_ptychi_reconstruction_as_a_model_scores_as_the_baseline(project):
    rows = table(project)

    pd.testing.assert_frame_equal(scores(rows, "copy"), scores(rows, "ptychi"))


def test_another_engines_study_is_compared_with_the_baseline(project):
    manifest = project / EPIE_ARTIFACTS / "reconstruction_manifest.json"
    jobs = json.loads(manifest.read_text())["jobs"]
    rows = table(project)
    epie = rows[(rows.model == "epie") & (rows.metric == "mae")]

    assert {job["engine"] for job in jobs} == {"EPIE"}
    assert set(epie.status) == {"scored"} and len(epie) == len(STUDY.jobs())
    assert (epie.phase < epie.null_phase).all()


def test_missing_and_broken_files_fail_only_their_rows(project):
    rows = table(project).set_index(["view", "model"])

    assert rows.loc[("dense", "partial"), "status"] == "missing"
    assert rows.loc[("dense", "partial"), "reason"].startswith("no file at ")
    reason = rows.loc[("dense", "broken"), "reason"]
    assert rows.loc[("dense", "broken"), "status"] == "failed"
    assert "broken/dose_100000/dense_test.npz: key 'amplitude'" in reason
    assert "int16" in reason
    for model in ("partial", "broken"):
        assert set(rows.loc[("baseline", model), "status"]) == {"scored"}


def test_the_default_run_compares_after_the_baselines(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("KEDRO_ENV", TINY_ENV)
    bootstrap_project(project)  # the project's settings: the soft config merge

    default = register_pipelines()["__default__"]

    order = [node.name for node in default.nodes]
    compare = order.index(f"{DENSE_JOB.namespace}.compare")
    assert compare > order.index(f"{DENSE_JOB.namespace}.reconstruct")
    assert order.index("comparison_summary.tabulate") > compare


def test_the_notebook_loads_the_comparison_through_the_catalog(project, monkeypatch):
    monkeypatch.chdir(project)
    bootstrap_project(project)
    notebook = nbformat.read(PROJECT_ROOT / "notebooks/explore_results.ipynb", 4)
    (cell,) = [
        c.source
        for c in notebook.cells
        if "comparison_summary.metrics_table" in c.source
    ]
    with KedroSession.create(project_path=project, env=TINY_ENV) as session:
        scope = {"catalog": session.load_context().catalog, "Markdown": Markdown}
        exec(cell, scope)  # noqa: S102 - the notebook's own cell

    assert {"ptychi", "full", "crop", "copy"} <= set(scope["shown"].columns)
