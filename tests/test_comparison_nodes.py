"""Comparison nodes on small arrays, its summary writers and figures, and the wiring."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import ndimage
from test_evaluation_metrics import _noisy, _object

from fly64_recon.datasets import JobArtifacts, NPZSource, npz_bytes
from fly64_recon.datasets.model_source import ModelSource, ObjectKeys
from fly64_recon.pipelines.comparison import create_pipeline, figures, nodes
from fly64_recon.pipelines.evaluation import nodes as evaluation
from fly64_recon.science import metrics as m
from fly64_recon.study import Job, StudyDesign

JOB = Job(10000.0, "dense", "test")
SCORING = {
    "illumination_fraction": 0.1,
    "upsample_factor": 10,
    "max_shift_px": 0.5,
    "max_phase_ramp_rad_per_px": 0.05,
}
PATCH = 16
SHAPE = (96, 128)
TRUTH = _object(SHAPE)
BLURRED = (
    ndimage.gaussian_filter(TRUTH.real, 0.6)
    + 1j * ndimage.gaussian_filter(TRUTH.imag, 0.6)
).astype(np.complex64)


def _positions() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.meshgrid(np.arange(28.0, 69.0, 8), np.arange(28.0, 101.0, 8))
    return x.ravel(), y.ravel()


def _arrays(reconstruction: np.ndarray) -> dict[str, np.ndarray]:
    """A pty-chi reconstruction file's arrays."""
    x, y = _positions()
    return {
        "reconstructed_object": reconstruction.astype(np.complex64),
        "reconstructed_probe": np.ones((1, 1, PATCH, PATCH), dtype=np.complex64),
        "xcoords": x,
        "ycoords": y,
        "pattern_index": np.arange(x.size),
        "loss": np.array([3.0, 1.0, 0.5]),
    }


def _write(path: Path, arrays: dict, **keys: str) -> ModelSource:
    """A file; as a model's, its object under ``keys`` (the defaults without)."""
    path.write_bytes(npz_bytes(arrays))
    return ModelSource(str(path), keys=ObjectKeys(**keys))


def _source(tmp_path: Path, truth: np.ndarray = TRUTH, **metadata) -> NPZSource:
    x, y = _positions()
    rng = np.random.default_rng(2)
    return _write(
        tmp_path / "dense_test.npz",
        {
            "diffraction": rng.random((x.size, PATCH, PATCH)).astype(np.float32),
            "probeGuess": np.ones((PATCH, PATCH), dtype=np.complex64),
            "objectGuess": truth.astype(np.complex64),
            "xcoords": x,
            "ycoords": y,
            "_metadata": np.array(json.dumps({"intensity_scale": 10.0, **metadata})),
        },
    )


BASELINE = JobArtifacts(
    {"namespace": JOB.namespace, "status": "succeeded"}, _arrays(_noisy(TRUTH, 0.08))
)


def compare(artifacts: JobArtifacts, source: NPZSource, *models, names):
    """The comparison node, after the evaluation that scores the pty-chi baseline."""
    metrics = evaluation.evaluate(artifacts, source, SCORING, JOB)
    return nodes.compare(
        artifacts, source, SCORING, metrics, *models, job=JOB, names=names
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One job compared with stand-ins, a copy of its baseline, a missing and a broken file."""
    tmp = tmp_path_factory.mktemp("models")
    # the lit region is rows 20:76, columns 20:108; the crop keeps 12 px around it
    crop = {"reconstructed_object": BLURRED[8:88, 8:120], "offset": np.array([8, 8])}
    models = {
        "blurred": _write(tmp / "blurred.npz", {"reconstructed_object": BLURRED}),
        "crop": _write(tmp / "crop.npz", crop),
        "copy": _write(
            tmp / "ptychi_reconstruction.npz",
            {**BASELINE.arrays, "provenance": np.array("{}")},
        ),
        "pinn": _write(
            tmp / "reconstructions.npz",
            {
                "ptychopinn_complex": BLURRED,
                "ptychopinn_amplitude": np.abs(BLURRED),
                "baseline_complex": TRUTH,
            },
            object="ptychopinn_complex",
        ),
        "parts": _write(
            tmp / "parts.npz",
            {"amp": np.abs(BLURRED), "ph": np.angle(BLURRED)},
            amplitude="amp",
            phase="ph",
        ),
        "absent": ModelSource(str(tmp / "absent.npz")),
        "broken": _write(tmp / "broken.npz", {"amplitude": np.ones(SHAPE, dtype=int)}),
    }
    result, images = compare(
        BASELINE, _source(tmp), *models.values(), names=list(models)
    )
    return result, images, {e["model"]: e for e in result["models"]}


def test_the_stand_in_scores_better_than_the_baseline(compared):
    result, _, entries = compared

    assert result["ground_truth"] and result["namespace"] == JOB.namespace
    assert [e["model"] for e in result["models"]] == [
        "ptychi",
        "blurred",
        "crop",
        "copy",
        "pinn",
        "parts",
        "absent",
        "broken",
    ]
    for name in ("ptychi", "blurred", "crop", "copy"):
        entry = entries[name]
        assert entry["status"] == "scored", entry
        assert entry["phase"]["mae"] < entry["null"]["phase"]["mae"]
        assert entry["coverage"] == 1.0
        floor = result["noise_floor"]["phase"]
        assert entry["noise_floor"]["phase"] == pytest.approx(floor)
    assert entries["blurred"]["phase"]["mae"] < 0.5 * entries["ptychi"]["phase"]["mae"]
    assert entries["blurred"]["phase"]["ssim"] > entries["ptychi"]["phase"]["ssim"]
    assert len(entries["blurred"]["sha256"]) == 64
    json.dumps(result)  # plain JSON


def _scores(entry: dict) -> dict:
    return {
        (kind, part, metric): value
        for kind, parts in (("score", entry), ("null", entry["null"]))
        for part in ("amplitude", "phase")
        for metric, value in parts[part].items()
    }


def test_a_crop_with_its_offset_scores_as_the_full_grid(compared):
    _, _, entries = compared
    full, crop = _scores(entries["blurred"]), _scores(entries["crop"])

    assert full.keys() == crop.keys()
    for key, value in full.items():
        assert crop[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert entries["crop"]["alignment"] == entries["blurred"]["alignment"]


def test_a_file_read_under_its_own_keys_scores_as_a_reconstructed_object(compared):
    """PtychoPINN's reconstructions.npz (ptychopinn_complex) and an amplitude/phase
    pair under other names, read as they are."""
    _, _, entries = compared
    blurred = _scores(entries["blurred"])

    assert _scores(entries["pinn"]) == blurred
    parts = _scores(entries["parts"])
    for key, value in blurred.items():
        assert parts[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_a_ptychi_reconstruction_compared_as_a_model_scores_as_the_baseline(compared):
    _, _, entries = compared

    copy, ptychi = _scores(entries["copy"]), _scores(entries["ptychi"])
    assert copy.keys() == ptychi.keys()
    for key, value in ptychi.items():  # the copy scored as a model's file (complex128)
        assert copy[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_a_missing_file_is_missing_and_a_broken_one_failed_with_file_and_key(compared):
    _, images, entries = compared

    assert entries["absent"]["status"] == "missing"
    assert entries["absent"]["reason"].startswith("no file at ")
    assert entries["absent"]["reason"].endswith("absent.npz")
    assert entries["broken"]["status"] == "failed"
    assert "broken.npz: no key 'reconstructed_object'" in entries["broken"]["reason"]
    assert "'amplitude'" in entries["broken"]["reason"]
    assert set(images) == {"truth", "mask", "ptychi", "blurred", "crop", "copy"} | {
        "pinn",
        "parts",
    }


def test_the_aligned_images_share_the_truths_region(compared):
    _, images, _ = compared

    assert images["truth"].shape == images["mask"].shape == images["crop"].shape
    error = np.angle(images["blurred"] * np.conj(images["truth"]))[images["mask"]]
    assert np.abs(error).mean() < 0.05


def test_a_job_without_ground_truth_scores_nothing(tmp_path):
    flat = np.ones(SHAPE, dtype=np.complex64)
    absent = ModelSource(str(tmp_path / "absent.npz"))

    result, images = compare(BASELINE, _source(tmp_path, flat), absent, names=["pinn"])

    assert images == {} and result["ground_truth"] is False
    ptychi, pinn = result["models"]
    assert ptychi["status"] == "not_scored" and "no ground truth" in ptychi["reason"]
    assert pinn["status"] == "missing"


def test_an_unreadable_truth_fails_no_run(tmp_path):
    gone = NPZSource(str(tmp_path / "gone.npz"))

    result, _ = compare(BASELINE, gone, names=[])

    (ptychi,) = result["models"]
    assert result["ground_truth"] is False
    assert "cannot be read: FileNotFoundError" in result["reason"]
    assert ptychi["status"] == "failed"  # the evaluation could not score it either
    assert "evaluation failed: FileNotFoundError" in ptychi["reason"]


def test_a_failed_baseline_is_missing_and_the_models_are_still_scored(tmp_path):
    failed = JobArtifacts(
        {"namespace": JOB.namespace, "status": "failed", "reason": "LSQML diverged"}
    )
    model = _write(tmp_path / "m.npz", {"reconstructed_object": BLURRED})

    result, _ = compare(failed, _source(tmp_path), model, names=["m"])

    ptychi, scored = result["models"]
    assert ptychi["status"] == "missing"
    assert ptychi["reason"] == "job failed: LSQML diverged"
    assert scored["status"] == "scored"


def test_the_table_is_tidy_with_references_and_the_reasons(compared):
    result, _, _ = compared
    never = Job(1000.0, "dense", "test")

    comparisons = nodes.collect_comparisons(result, {}, jobs=[JOB, never])
    table = nodes.comparison_table(comparisons)

    assert list(table.columns) == nodes.TABLE_COLUMNS
    scored = table[table.status == "scored"]
    assert set(scored.model) == {"ptychi", "blurred", "crop", "copy", "pinn", "parts"}
    assert len(scored) == 6 * 6
    assert set(scored.metric) == {"mae", "mse", "psnr", "ssim", "ms_ssim", "frc_0.5"}
    mae = scored[(scored.model == "blurred") & (scored.metric == "mae")].iloc[0]
    assert mae.phase < mae.null_phase and mae.phase_noise_floor > 0
    others = table[table.status != "scored"].set_index("model")
    assert others.loc["absent", "status"] == "missing"
    assert "'amplitude'" in others.loc["broken", "reason"]
    assert comparisons[1]["reason"].startswith("no comparison.json on disk")


def test_the_report_says_which_is_better_and_by_how_much(compared):
    result, _, _ = compared

    report = nodes.comparison_report([result])

    assert "`blurred`" in report and "`crop`" in report
    rows = {
        line.split(" | ")[3]: line for line in report.splitlines() if "| 1e4 |" in line
    }
    blurred = rows["`blurred`"]
    assert "better: 0." in blurred and "x pty-chi's phase MAE" in blurred
    assert "equal: 1.00x" in rows["`copy`"]
    assert "## Not scored" in report
    assert "`absent`: missing: no file at" in report
    assert "`broken`: failed:" in report


def test_a_shifted_or_flat_model_is_flagged_in_words(tmp_path):
    moved = m.shift_complex(BLURRED, (0.0, 1.5))
    flat = np.ones(SHAPE, dtype=np.complex64)
    models = [
        _write(tmp_path / "moved.npz", {"reconstructed_object": moved}),
        _write(tmp_path / "flat.npz", {"reconstructed_object": flat}),
    ]

    result, _ = compare(BASELINE, _source(tmp_path), *models, names=["moved", "flat"])

    entries = {e["model"]: e for e in result["models"]}
    assert entries["ptychi"]["flags"] == []
    assert entries["moved"]["flags"] == [
        "registration shifted the reconstruction by 1.50 px (bound 0.5 px): the "
        "alignment may be spurious"
    ]
    assert any("not below the null reference" in f for f in entries["flat"]["flags"])
    report = nodes.comparison_report([result])
    assert "## Flags" in report and "`moved`: registration shifted" in report


def test_the_verdict_flags_a_model_no_better_than_no_reconstruction():
    entry = {
        "phase": {"mae": 0.3},
        "null": {"phase": {"mae": 0.2}},
        "coverage": 0.5,
    }
    base = {"phase": {"mae": 0.1}}

    assert nodes.verdict(entry, base) == (
        "worse: 3.00x pty-chi's phase MAE; not below the flat object; "
        "scored on 50% of the lit pixels"
    )
    assert nodes.verdict(entry, None).startswith("no pty-chi score to compare")


def test_the_figures_draw(compared):
    result, images, _ = compared
    table = nodes.comparison_table([result, {**result, "dose": 1000.0}])

    drawn = [
        figures.comparison_figure(images, JOB),
        figures.comparison_figure({}, JOB),
        figures.metrics_vs_dose_figure(table),
        figures.metrics_vs_dose_figure(table.iloc[:0]),
    ]

    for figure in drawn:
        assert isinstance(figure, Figure)
        figure.savefig(io.BytesIO(), format="png", dpi=30)


def test_each_job_compares_in_its_own_namespace_and_the_summary_fans_in():
    design = StudyDesign(doses=(1e3, 1e4))
    pipeline = create_pipeline(design=design, models={"pinn": "p/{dose}.npz"})

    node = {n.name: n for n in pipeline.nodes}
    compare = node["dose_1e4.dense.test.compare"]
    assert compare.namespace == "dose_1e4.dense.test"
    assert compare.inputs == [
        "dose_1e4.dense.test.job_artifacts",
        "phase_d__dose_10000__dense__dense_test@source",
        "params:scoring",
        "dose_1e4.dense.test.metrics",  # the evaluation's score of the baseline
        "comparison__pinn__dose_10000__dense__test",
    ]
    assert compare.outputs == [
        "dose_1e4.dense.test.comparison",
        "dose_1e4.dense.test.comparison_images",
    ]
    assert node["dose_1e4.dense.test.plot_comparison"].outputs == [
        "dose_1e4.dense.test.comparison_plot"
    ]
    assert len(pipeline.only_nodes_with_namespaces(["dose_1e3"]).nodes) == 12
    summary = pipeline.only_nodes_with_tags("comparison_summary")
    assert summary.all_outputs() >= {
        "comparison_summary.metrics_table",
        "comparison_summary.report",
        "comparison_summary.metrics_vs_dose",
    }


def test_without_models_the_comparison_only_explains_and_bad_models_stop_early(
    caplog,
):
    design = StudyDesign(doses=(1e3,))

    alone = create_pipeline(design=design, models={})

    assert [node.name for node in alone.nodes] == ["no_models"]
    alone.nodes[0].run({"params:comparison": {"models": {}}})
    assert "no model to compare (comparison.models is {}): declare one" in caplog.text
    with pytest.raises(ValueError, match="comparison_models.ptychi"):
        create_pipeline(design=design, models={"ptychi": "x.npz"})
