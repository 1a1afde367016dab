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

from fly64_recon import config
from fly64_recon.datasets import (
    JobArtifacts,
    JobJSONDataset,
    ManifestEntryDataset,
    NPZSource,
    npz_bytes,
)
from fly64_recon.pipelines.evaluation import figures, nodes, report
from fly64_recon.pipelines.evaluation.pipeline import create_pipeline
from fly64_recon.record import JobRecord, JobStatus
from fly64_recon.science import metrics
from fly64_recon.science.scoring import TRUTH_MEMBERS
from fly64_recon.study import Job, StudyDesign

PROJECT = Path(__file__).resolve().parents[1]
JOB = Job(1000.0, "baseline", "test")
PARAMS = {
    "illumination_fraction": 0.1,
    "upsample_factor": 10,
    "max_shift_px": 0.5,
    "max_phase_ramp_rad_per_px": 0.05,
    "grid_split": "test",
}
PATCH = 16
# Positions covering the middle of the object; footprints span rows 12-84, cols 12-116.
Y, X = (
    grid.ravel()
    for grid in np.meshgrid(np.arange(20.0, 77, 8), np.arange(20.0, 109, 8))
)
CONVERGED = {"epochs_run": 3, "stop_reason": "loss_plateau", "converged": True}


def _artifacts(
    reconstruction: np.ndarray, status: str = "succeeded", **record
) -> JobArtifacts:
    """What a job leaves on disk."""
    arrays = {
        "reconstructed_object": reconstruction.astype(np.complex64),
        "reconstructed_probe": np.ones((1, 1, PATCH, PATCH), dtype=np.complex64),
        "xcoords": X,
        "ycoords": Y,
        "pattern_index": np.arange(X.size),
        "loss": np.array([3.0, 1.0, 0.5]),
    }
    fields = {"status": status, "reason": None, "overlap": 0.4, **CONVERGED, **record}
    return JobArtifacts(on_disk(fields), arrays)


def on_disk(record: dict) -> dict:
    """A job.json of ``JOB`` with these fields (none: no job.json)."""
    return {"namespace": JOB.namespace, **record} if record else {}


def _source(tmp_path: Path, object_guess: np.ndarray, **metadata) -> NPZSource:
    path = tmp_path / "patched_test.npz"
    arrays = {
        "diffraction": np.ones((X.size, PATCH, PATCH), dtype=np.float32),
        "probeGuess": np.ones((PATCH, PATCH), dtype=np.complex64),
        "objectGuess": object_guess.astype(np.complex64),
        "xcoords": X,
        "ycoords": Y,
        "_metadata": np.array(json.dumps({"dose": 1000.0, **metadata})),
    }
    path.write_bytes(npz_bytes(arrays))
    return NPZSource(str(path))


def test_a_good_reconstruction_is_measured_against_its_ground_truth(tmp_path):
    truth = _object()
    shifted = metrics.shift_complex(1.3 * truth * np.exp(0.4j), (0.5, -0.3))

    result = nodes.evaluate(_artifacts(shifted), _source(tmp_path, truth), PARAMS, JOB)

    assert result["status"] == "scored" and result["ground_truth"]
    assert result["namespace"] == JOB.namespace and result["job_status"] == "succeeded"
    assert result["region"] == [12, 84, 12, 116]  # where the footprints lit it
    assert result["scan"]["lit_px"] == 72 * 104
    np.testing.assert_allclose(result["alignment"]["shift_px"], [-0.5, 0.3], atol=0.1)
    assert result["phase"]["mae"] < result["null"]["phase"]["mae"]
    assert result["noise_floor"]["phase"]["mae"] > 0
    # A 0.58 px shift on the truth's own grid is beyond the 0.5 px bound: flagged.
    assert result["flags"] == [
        "registration shifted the reconstruction by 0.58 px (bound 0.5 px): the "
        "alignment may be spurious"
    ]
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

    assert result["status"] == "missing"
    assert why in result["reason"]
    assert "phase" not in result


def test_a_flat_object_guess_gets_data_fit_metrics_only(tmp_path):
    flat = np.ones((96, 128), dtype=np.complex64)

    result = nodes.evaluate(_artifacts(_object()), _source(tmp_path, flat), PARAMS, JOB)

    assert result["status"] == "not_scored" and result["ground_truth"] is False
    assert "phase" not in result and "amplitude" not in result
    assert result["data_fit"]["loss"] == [3.0, 1.0, 0.5]


def test_metadata_can_say_there_is_no_ground_truth(tmp_path):
    source = _source(tmp_path, _object(), ground_truth=False)

    result = nodes.evaluate(_artifacts(_object()), source, PARAMS, JOB)

    assert result["ground_truth"] is False and "phase" not in result


def test_an_evaluation_that_fails_says_why_instead_of_raising(tmp_path):
    source = _source(tmp_path, _object((64, 64)))

    result = nodes.evaluate(_artifacts(_object()), source, PARAMS, JOB)

    assert result["status"] == "failed"
    assert "evaluation failed" in result["reason"] and "same grid" in result["reason"]


def test_the_manifest_section_is_the_headline_without_curves(tmp_path):
    truth = _object()
    result = nodes.evaluate(_artifacts(truth), _source(tmp_path, truth), PARAMS, JOB)

    headline = nodes.manifest_section(result)

    assert "frc_curves" not in headline and "alignment" not in headline
    assert "namespace" not in headline and headline["status"] == "scored"
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


def _job_metrics(
    dose: float, view: str, mae: float, null: float = 0.5, **extra
) -> dict:
    scores = dict.fromkeys(("mae", "mse", "psnr", "ssim", "ms_ssim", "frc_0.5"), mae)
    return {
        **nodes.job_fields(Job(dose, view, "test")),
        "job_status": "succeeded",
        "status": "scored",
        "ground_truth": True,
        "amplitude": scores,
        "phase": {**scores, "mae": mae},
        "null": {"amplitude": scores, "phase": {**scores, "mae": null}},
        "noise_floor": {"phase": {"mae": 0.01, "mse": 1e-4}},
        "scan": {"overlap": 0.4, "probe_diameter_px": 30.0, "photons_per_px2": dose},
        "data_fit": {"final_loss": 0.1, "epochs": 3, "loss": [1.0, 0.5, 0.1]},
        "convergence": CONVERGED,
        "flags": [],
        **extra,
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
    assert missing["status"] == "missing" and "no metrics.json" in missing["reason"]


def test_the_metrics_table_is_tidy_with_the_references_beside(study_metrics):
    table = nodes.metrics_table(study_metrics)

    assert list(table.columns) == [
        "dose",
        "view",
        "split",
        "metric",
        "amplitude",
        "phase",
        "null_amplitude",
        "null_phase",
        "phase_noise_floor",
    ]
    assert len(table) == 2 * 6
    mae = table[(table.metric == "mae")].set_index("dose")
    assert mae["phase"].to_dict() == {1e3: 0.3, 1e5: 0.1}
    assert mae["null_phase"].to_dict() == {1e3: 0.5, 1e5: 0.5}
    assert mae["phase_noise_floor"].to_dict() == {1e3: 0.01, 1e5: 0.01}
    assert table[table.metric == "ssim"]["phase_noise_floor"].isna().all()


def test_the_report_has_the_table_the_science_check_and_the_missing_jobs(
    study_metrics,
):
    text = report.summary_report(study_metrics)

    assert (
        "| dose | view | split | phase MAE (rad) | null | floor | MAE / null |" in text
    )
    assert "| 1e3 | baseline | test | 0.3000 | 0.5000 | 0.0100 | 0.60 | 30.0 |" in text
    assert (
        "baseline view: phase MAE falls from 0.3000 rad at dose 1e3 to 0.1000 rad at "
        "dose 1e5" in text
    )
    assert "baseline view at dose 1e5: below the null reference (0.20x" in text
    assert "| baseline | 0.400 | 30.0 | 1e+03 | 1e+05 |" in text  # the view's scan
    assert "No job is flagged." in text
    assert "2 of 2 evaluated jobs converged" in text
    assert "`dose_1e3.dense.test`: no metrics.json on disk" in text


def test_the_report_names_flagged_and_unconverged_jobs_in_words():
    worse = _job_metrics(
        1e3,
        "sparse",
        0.6,
        flags=["phase MAE 0.6000 rad is not below the null reference 0.5000 rad"],
        convergence={"epochs_run": 60, "stop_reason": "epoch_cap", "converged": False},
    )

    text = report.summary_report([worse, _job_metrics(1e5, "sparse", 0.2)])

    assert (
        "- `dose_1e3.sparse.test`: phase MAE 0.6000 rad is not below the null "
        "reference 0.5000 rad." in text
    )
    assert "`dose_1e3.sparse.test` did not converge: epoch_cap after 3 epochs" in text


def test_the_report_says_which_jobs_ran_on_past_their_plateau():
    judged = {**CONVERGED, "plateau_epoch": 2}  # 3 epochs run
    text = report.summary_report(
        [
            _job_metrics(1e3, "baseline", 0.3, convergence=judged),
            _job_metrics(1e5, "baseline", 0.1, convergence=CONVERGED),
        ]
    )

    assert "2 of 2 evaluated jobs converged" in text
    assert (
        "1 of them ran on past the epoch at which the loss stopped improving "
        "(epochs 2-2)." in text
    )
    assert "ran on past" not in report.summary_report([_job_metrics(1e5, "dense", 0.1)])


def test_the_report_names_the_engine_and_the_position_errors():
    moved = {
        "position_correction": True,
        "rms_error_before_px": 2.0,
        "rms_error_after_px": 0.5,
        "relative_change": -0.75,
        "common_shift_after_px": [0.1, -0.2],
    }
    unjudged = {"epochs_run": 3, "stop_reason": "epoch_cap", "converged": None}
    jobs = [
        _job_metrics(1e3, "dense", 0.3, engine="EPIE", positions=moved),
        _job_metrics(1e5, "dense", 0.2, engine="DM", convergence=unjudged),
    ]

    text = report.summary_report(jobs)

    assert text.startswith("# pty-chi DM/EPIE baseline: study summary")
    assert "`dose_1e5.dense.test`: convergence not judged" in text
    assert "## Positions" in text
    assert "| 1e3 | dense | test | yes | 2.000 | 0.500 | -75% |" in text
    assert "dose_1e5" not in text.split("## Positions")[1].split("##")[0]


def test_the_positions_are_measured_against_the_true_ones(tmp_path):
    truth = np.exp(1j * np.linspace(0, 1, 96 * 128)).reshape(96, 128)
    shaken = {"xcoords_true": X + 1.0, "ycoords_true": Y - 2.0}  # a common shift
    members = {**_source(tmp_path, truth).load_members(TRUTH_MEMBERS), **shaken}
    record = JobRecord(JOB, JobStatus.SUCCEEDED, position_correction=False)

    found = nodes.measure(_artifacts(truth).arrays, members, record, PARAMS)

    positions = found["positions"]
    assert positions["position_correction"] is False
    assert positions["rms_error_before_px"] == pytest.approx(0.0, abs=1e-12)
    assert positions["common_shift_after_px"] == pytest.approx([2.0, -1.0])
    assert "positions" in nodes.manifest_section(found)


def test_the_science_check_says_when_the_error_does_not_fall_or_beats_no_null():
    rising = [
        _job_metrics(1e3, "baseline", 0.1),
        _job_metrics(1e5, "baseline", 0.6),
    ]

    lines = report.science_check(rising)

    assert "does NOT fall" in lines[0]
    assert "NOT below the null reference (1.20x" in lines[1]


def test_a_score_not_below_the_null_and_a_capped_job_are_flagged(tmp_path):
    truth = _object()
    flat = np.ones_like(truth) * np.exp(0.2j)
    capped = {"stop_reason": "epoch_cap", "converged": False, "epochs_run": 20}

    result = nodes.evaluate(
        _artifacts(flat, **capped), _source(tmp_path, truth), PARAMS, JOB
    )

    assert result["phase"]["mae"] == pytest.approx(result["null"]["phase"]["mae"])
    assert any("is not below the null reference" in flag for flag in result["flags"])
    assert any(
        "stopped by the epoch cap (20 epochs) while the loss was still improving"
        in flag
        for flag in result["flags"]
    )


def test_the_headline_keeps_the_references_and_the_flags(tmp_path):
    truth = _object()
    result = nodes.evaluate(_artifacts(truth), _source(tmp_path, truth), PARAMS, JOB)

    headline = nodes.manifest_section(result)

    assert headline["null"] == result["null"]
    assert headline["noise_floor"] == result["noise_floor"]
    assert headline["flags"] == [] and headline["scan"]["lit_px"] > 0
    assert (
        headline["phase_ramp_rad_per_px"]
        == result["alignment"]["phase_ramp_rad_per_px"]
    )


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


def test_the_catalog_puts_every_output_where_the_design_says(tmp_path, monkeypatch):
    loader = OmegaConfigLoader(
        str(PROJECT / "conf"),
        base_env="base",
        default_run_env="base",
        runtime_params={"artifact_root": str(tmp_path), "reporting_root": "rep"},
    )
    # What the project's context does when Kedro makes it: the design is read from it.
    monkeypatch.setitem(config._active, "config_loader", loader)
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


def test_the_jobs_own_warnings_are_its_flags_beside_its_scores(tmp_path):
    truth = _object()
    misfit = "does not explain its own patterns: final loss 4 is 12.0x ..."
    artifacts = _artifacts(truth, warnings=[misfit])

    result = nodes.evaluate(artifacts, _source(tmp_path, truth), PARAMS, JOB)

    assert misfit in result["flags"]


def test_an_unsettled_object_says_how_much_it_still_changed():
    record = JobRecord(
        Job(1e5, "baseline", "test"),
        JobStatus.SUCCEEDED,
        engine="LSQML",
        epochs_run=100,
        stop_rule="object",
        stop_reason="epoch_cap",
        converged=False,
        object_change={"low": 0.279, "high": 0.72},
    )

    (flag,) = nodes.job_flags(record)

    assert flag == (
        "not converged: stopped by the epoch cap (100 epochs) while the object still "
        "changed by 0.28 noise floors (ptychi_baseline.convergence.settled); raise "
        "ptychi_baseline.lsqml.reconstructor_options.num_epochs"
    )

    early = replace(record, epochs_run=12, object_change=None)
    assert "before the object rule's first measurement" in nodes.job_flags(early)[0]
