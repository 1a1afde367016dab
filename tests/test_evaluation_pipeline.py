"""Evaluation nodes on small arrays, the metrics dataset, the summary writers, the wiring."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from matplotlib.figure import Figure
from test_evaluation_metrics import _object

from fly64_recon.datasets import (
    JobArtifacts,
    JobJSONDataset,
    ManifestEntryDataset,
    NPZSource,
    npz_bytes,
)
from fly64_recon.pipelines.evaluation import figures, metrics, nodes
from fly64_recon.pipelines.evaluation.pipeline import create_pipeline
from fly64_recon.record import JobRecord, JobStatus
from fly64_recon.study import Job, StudyDesign

PROJECT = Path(__file__).resolve().parents[1]
JOB = Job(1000.0, "baseline", "test")
PARAMS = {
    "crop_margin": 0.25,
    "upsample_factor": 10,
    "flat_tolerance": 1e-6,
    "grid_split": "test",
}
PATCH = 16


def _artifacts(reconstruction: np.ndarray, status: str = "succeeded") -> JobArtifacts:
    """What a job leaves on disk, with positions covering the middle of the object."""
    y, x = np.meshgrid(np.arange(20.0, 77.0, 8), np.arange(20.0, 109.0, 8))
    arrays = {
        "reconstructed_object": reconstruction.astype(np.complex64),
        "reconstructed_probe": np.ones((1, 1, PATCH, PATCH), dtype=np.complex64),
        "xcoords": x.ravel(),
        "ycoords": y.ravel(),
        "pattern_index": np.arange(x.size),
        "loss": np.array([3.0, 1.0, 0.5]),
    }
    return JobArtifacts(on_disk({"status": status, "reason": None}), arrays)


def on_disk(record: dict) -> dict:
    """A job.json of ``JOB`` with these fields (none: no job.json)."""
    return {"namespace": JOB.namespace, **record} if record else {}


def _source(tmp_path: Path, object_guess: np.ndarray, **metadata) -> NPZSource:
    path = tmp_path / "patched_test.npz"
    arrays = {
        "diffraction": np.ones((2, PATCH, PATCH), dtype=np.float32),
        "objectGuess": object_guess.astype(np.complex64),
        "_metadata": np.array(json.dumps({"dose": 1000.0, **metadata})),
    }
    path.write_bytes(npz_bytes(arrays))
    return NPZSource(str(path))


def test_a_good_reconstruction_is_measured_against_its_ground_truth(tmp_path):
    truth = _object()
    shifted = metrics.shift_complex(1.3 * truth * np.exp(0.4j), (0.5, -0.3))

    result = nodes.evaluate(_artifacts(shifted), _source(tmp_path, truth), PARAMS, JOB)

    assert result["evaluated"] and result["ground_truth"]
    assert result["namespace"] == JOB.namespace and result["status"] == "succeeded"
    assert result["region"] == [16, 80, 16, 112]  # footprints, less N/4 a side
    np.testing.assert_allclose(result["alignment"]["shift_px"], [-0.5, 0.3], atol=0.1)
    assert result["phase"]["ssim"] > 0.95 and result["amplitude"]["ssim"] > 0.95
    assert result["data_fit"]["final_loss"] == 0.5 and result["n_patterns"] == 96
    json.dumps(result)  # plain JSON


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (
            {"status": "failed", "reason": "LSQML diverged"},
            "job failed: LSQML diverged",
        ),
        (
            {"status": "skipped", "reason": "input missing"},
            "job skipped: input missing",
        ),
        ({"status": "planned", "reason": None}, "job planned"),
        ({"status": "succeeded"}, "reconstruction file is missing"),
        ({}, "the job has not run"),
    ],
)
def test_a_job_without_a_reconstruction_is_not_evaluated(tmp_path, record, why):
    missing = NPZSource(str(tmp_path / "never_opened.npz"))

    result = nodes.evaluate(JobArtifacts(on_disk(record)), missing, PARAMS, JOB)

    assert result["evaluated"] is False
    assert why in result["reason"]
    assert "phase" not in result


def test_a_flat_object_guess_gets_data_fit_metrics_only(tmp_path):
    flat = np.ones((96, 128), dtype=np.complex64)

    result = nodes.evaluate(_artifacts(_object()), _source(tmp_path, flat), PARAMS, JOB)

    assert result["evaluated"] and result["ground_truth"] is False
    assert "phase" not in result and "amplitude" not in result
    assert result["data_fit"]["loss"] == [3.0, 1.0, 0.5]


def test_metadata_can_say_there_is_no_ground_truth(tmp_path):
    source = _source(tmp_path, _object(), ground_truth=False)

    result = nodes.evaluate(_artifacts(_object()), source, PARAMS, JOB)

    assert result["ground_truth"] is False and "phase" not in result


def test_an_evaluation_that_fails_says_why_instead_of_raising(tmp_path):
    source = _source(tmp_path, _object((64, 64)))

    result = nodes.evaluate(_artifacts(_object()), source, PARAMS, JOB)

    assert result["evaluated"] is False
    assert "evaluation failed" in result["reason"] and "same grid" in result["reason"]


def test_the_manifest_section_is_the_headline_without_curves(tmp_path):
    truth = _object()
    result = nodes.evaluate(_artifacts(truth), _source(tmp_path, truth), PARAMS, JOB)

    headline = nodes.manifest_section(result)

    assert "frc_curves" not in headline and "alignment" not in headline
    assert "namespace" not in headline and headline["evaluated"] is True
    assert "loss" not in headline["data_fit"]
    assert headline["phase"] == result["phase"]
    assert headline["shift_px"] == result["alignment"]["shift_px"]


def test_the_jobs_record_gets_the_headline_for_its_manifest_entry(tmp_path):
    truth = _object()
    result = nodes.evaluate(_artifacts(truth), _source(tmp_path, truth), PARAMS, JOB)
    entry = {**JobRecord(JOB, JobStatus.SUCCEEDED).to_dict(), "output_dir": "/x"}

    record = nodes.report_metrics(result, entry)

    assert record == replace(
        JobRecord.from_dict(entry), metrics=nodes.manifest_section(result)
    )


def test_the_metrics_dataset_round_trips_in_the_job_folder(tmp_path):
    dataset = JobJSONDataset(
        path=str(tmp_path), namespace=JOB.namespace, file="metrics.json"
    )
    assert dataset.load() == {} and not dataset.exists()

    dataset.save({"phase": {"mae": np.float32(0.25)}, "n": np.int64(3)})

    assert (tmp_path / "dose_1000/baseline/test/metrics.json").exists()
    assert dataset.load() == {"phase": {"mae": 0.25}, "n": 3}


def _job_metrics(dose: float, view: str, mae: float) -> dict:
    scores = dict.fromkeys(("mae", "mse", "psnr", "ssim", "ms_ssim"), mae)
    scores |= {"frc_0.5": 0.5, "frc_1/7": 0.9}
    return {
        **nodes.job_fields(Job(dose, view, "test")),
        "status": "succeeded",
        "evaluated": True,
        "ground_truth": True,
        "amplitude": scores,
        "phase": {**scores, "mae": mae},
        "data_fit": {"final_loss": 0.1, "epochs": 3, "loss": [1.0, 0.5, 0.1]},
    }


@pytest.fixture
def study_metrics() -> list[dict]:
    jobs = [Job(d, "baseline", "test") for d in (1e3, 1e5)] + [
        Job(1e3, "dense", "test")
    ]
    found = [_job_metrics(1e3, "baseline", 0.3), _job_metrics(1e5, "baseline", 0.1), {}]
    return nodes.collect_metrics(*found, jobs=jobs)


def test_collect_metrics_names_the_jobs_without_metrics(study_metrics):
    missing = study_metrics[-1]

    assert missing["namespace"] == "dose_1e3.dense.test"
    assert missing["evaluated"] is False and "no metrics.json" in missing["reason"]


def test_the_metrics_table_is_tidy(study_metrics, tmp_path):
    table = nodes.metrics_table(study_metrics)

    assert list(table.columns) == [
        "dose",
        "view",
        "split",
        "metric",
        "amplitude",
        "phase",
    ]
    assert len(table) == 2 * 7
    phase_mae = table[(table.metric == "mae")].set_index("dose")["phase"]
    assert phase_mae.to_dict() == {1e3: 0.3, 1e5: 0.1}


def test_the_report_has_the_table_the_science_check_and_the_missing_jobs(
    study_metrics,
):
    report = nodes.summary_report(study_metrics)

    assert "| dose | view | split | phase MAE (rad) |" in report
    assert "| 1e3 | baseline | test | 0.3000 |" in report
    assert (
        "phase MAE falls from 0.3000 rad at dose 1e3 to 0.1000 rad at dose 1e5"
        in report
    )
    assert "`dose_1e3.dense.test`: no metrics.json on disk" in report


def test_the_science_check_says_when_the_error_does_not_fall():
    rising = [_job_metrics(1e3, "baseline", 0.1), _job_metrics(1e5, "baseline", 0.2)]

    assert "does NOT fall" in nodes.science_check(rising)[0]


def test_the_phase_grid_uses_the_alignment_of_the_metrics(tmp_path, study_metrics):
    truth = _object()
    measured = nodes.evaluate(_artifacts(truth), _source(tmp_path, truth), PARAMS, JOB)
    jobs = [JOB, Job(1e3, "baseline", "train")]
    all_metrics = [measured, {**measured, "split": "train"}]

    phases = nodes.aligned_phases(
        all_metrics, PARAMS, _artifacts(truth), _artifacts(truth), jobs=jobs
    )

    assert list(phases) == [JOB.namespace]
    np.testing.assert_allclose(
        phases[JOB.namespace],
        np.angle(metrics.crop(truth, measured["region"])),
        atol=1e-4,
    )


def test_the_figures_draw_what_there_is_and_say_when_there_is_nothing(study_metrics):
    table = nodes.metrics_table(study_metrics)
    phases = {"dose_1e3.baseline.test": np.zeros((20, 40))}
    drawn = [
        figures.phase_grid_figure(phases),
        figures.metrics_vs_dose_figure(table),
        figures.convergence_figure(study_metrics),
        figures.phase_grid_figure({}),
        figures.metrics_vs_dose_figure(table.iloc[:0]),
        figures.convergence_figure([]),
    ]

    assert all(isinstance(figure, Figure) for figure in drawn)


def test_each_job_is_evaluated_in_its_own_namespace_and_the_summary_fans_in():
    design = StudyDesign(doses=(1e3, 1e5))
    pipeline = create_pipeline(design=design)

    dose = pipeline.only_nodes_with_namespaces(["dose_1e3"])
    assert {node.name for node in dose.nodes} == {
        f"{job.namespace}.{name}"
        for job in design.jobs()
        if job.dose == 1e3
        for name in ("evaluate", "report_metrics")
    }
    summary = pipeline.only_nodes_with_tags("study_summary")
    assert {node.namespace for node in summary.nodes} == {"study_summary"}
    assert summary.inputs() >= {f"{job.namespace}.metrics" for job in design.jobs()}
    assert "dose_1e5.sparse.train.manifest_metrics" in pipeline.outputs()


def test_the_catalog_puts_every_output_where_the_design_says(tmp_path):
    loader = OmegaConfigLoader(
        str(PROJECT / "conf"),
        base_env="base",
        default_run_env="base",
        runtime_params={"artifact_root": str(tmp_path), "reporting_root": "rep"},
    )
    catalog = DataCatalog.from_config(loader["catalog"])

    metrics_file = catalog.get("dose_1e4.dense.test.metrics")
    manifest = catalog.get("dose_1e4.dense.test.manifest_metrics")
    assert isinstance(metrics_file, JobJSONDataset)
    assert metrics_file._describe()["filepath"].endswith(
        "dose_10000/dense/test/metrics.json"
    )
    assert isinstance(manifest, ManifestEntryDataset)
    entry = catalog.get("dose_1e4.dense.test.manifest_entry")
    assert manifest._describe() == entry._describe()  # the job's entry, rewritten
    for name, file in [
        ("metrics_table", "metrics.csv"),
        ("report", "study_summary.md"),
        ("phase_grid", "phase_grid.png"),
        ("metrics_vs_dose", "metrics_vs_dose.png"),
        ("convergence", "convergence.png"),
    ]:
        assert str(catalog.get(f"study_summary.{name}")._filepath) == f"rep/{file}"
