"""One job's nodes: validation, skip/fail/cache/dry-run, failure reasons, the job folder."""

import hashlib
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import (
    base_parameters,
    baseline_params,
    merged,
    simulate_phase_c,
    tiny_simulate_params,
)

from fly64_recon import devices
from fly64_recon.datasets import JobArtifacts, JobFolderDataset, NPZSource, npz_bytes
from fly64_recon.pipelines.ptychi_baseline import nodes, task
from fly64_recon.pipelines.ptychi_baseline.options import BaselineOptions
from fly64_recon.record import JobRecord, JobStatus, after_lost_worker
from fly64_recon.science.scoring import has_ground_truth
from fly64_recon.study import Job

GEOMETRY = base_parameters()["geometry"]
JOB = Job(1000.0, "dense", "test")
PARAMS = baseline_params(
    device="cpu", lsqml={"reconstructor_options": {"num_epochs": 2, "batch_size": 16}}
)


@pytest.fixture(scope="module")
def study_file():
    params = tiny_simulate_params(patch_size=16, object_size=48, rows=6)
    return simulate_phase_c(params, 1000.0)["test"]


@pytest.fixture
def source(tmp_path, study_file):
    path = tmp_path / "dense_test.npz"
    path.write_bytes(npz_bytes(study_file))
    return NPZSource(str(path))


@pytest.fixture
def empty_folder(tmp_path):
    return JobFolderDataset(path=str(tmp_path / "out"), namespace=JOB.namespace)


def test_a_valid_input_is_ready_with_the_hash_of_its_bytes(source, study_file):
    checked = nodes.validate_input(source, PARAMS, JOB)

    assert checked.status == "ready"
    assert checked.sha256 == hashlib.sha256(open(source.path, "rb").read()).hexdigest()
    np.testing.assert_array_equal(
        checked.arrays["diffraction"], study_file["diffraction"]
    )


def test_a_missing_input_skips_the_job(tmp_path):
    missing = NPZSource(str(tmp_path / "nowhere.npz"))

    checked = nodes.validate_input(missing, PARAMS, JOB)

    assert checked.status == "skipped"
    assert "nowhere.npz" in checked.reason


def test_strict_turns_a_missing_input_into_an_error(tmp_path):
    missing = NPZSource(str(tmp_path / "nowhere.npz"))

    with pytest.raises(nodes.MissingInputError, match="nowhere.npz"):
        nodes.validate_input(missing, {**PARAMS, "strict": True}, JOB)


def test_a_broken_input_fails_the_job_naming_file_and_key(tmp_path, study_file):
    path = tmp_path / "bad.npz"
    bad = dict(study_file, xcoords=study_file["xcoords"][:-1])
    path.write_bytes(npz_bytes(bad))

    checked = nodes.validate_input(NPZSource(str(path)), PARAMS, JOB)

    assert checked.status == "failed"
    assert str(path) in checked.reason and "xcoords" in checked.reason


def test_a_truncated_input_fails_the_job(tmp_path, source):
    path = tmp_path / "cut.npz"
    path.write_bytes(open(source.path, "rb").read()[:100])

    checked = nodes.validate_input(NPZSource(str(path)), PARAMS, JOB)

    assert checked.status == "failed"
    assert str(path) in checked.reason


def test_every_parameter_comes_from_the_configuration_or_is_named_missing():
    incomplete = {k: v for k, v in PARAMS.items() if k != "subsample_seed"}

    with pytest.raises(
        ValueError, match=r"missing parameter\(s\) \['subsample_seed'\]"
    ):
        BaselineOptions.from_params(incomplete)


def test_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown parameter"):
        BaselineOptions.from_params(baseline_params(num_epochs=3))


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_jobs_that_cannot_run_pass_their_status_on(status, empty_folder):
    options = BaselineOptions.from_params(PARAMS)
    checked = nodes.CheckedInput(JOB, options, "x.npz", JobStatus(status), "why")

    out = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)

    assert out.arrays is None
    assert (out.record["status"], out.record["reason"]) == (status, "why")


def test_a_fresh_job_reconstructs_then_a_rerun_is_cached(source, empty_folder):
    checked = nodes.validate_input(source, PARAMS, JOB)

    first = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)
    empty_folder.save(first)
    again = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)
    changed = {**PARAMS, "object_init": "ground_truth"}
    recomputed = nodes.reconstruct(
        nodes.validate_input(source, changed, JOB), empty_folder.load(), GEOMETRY
    )

    record = first.record
    assert record["status"] == "succeeded"
    assert record["n_patterns"] == len(checked.arrays["diffraction"])
    assert record["device"] == "cpu" and record["num_epochs"] == 2
    assert np.isfinite(record["final_loss"]) and record["wall_time_s"] > 0
    obj = first.arrays["reconstructed_object"]
    assert obj.dtype == np.complex64 and obj.shape == (48, 48)
    assert first.arrays["reconstructed_probe"].shape == (1, 1, 16, 16)
    assert first.arrays["loss"].shape == (2,)
    assert str(first.arrays["algorithm"]) == "ptychi_lsqml"  # PtychoPINN's label
    assert "Epoch" in first.log
    assert again.record["status"] == "cached" and again.arrays is None
    assert again.record["final_loss"] == record["final_loss"]
    assert recomputed.record["status"] == "succeeded"


def test_dry_run_plans_without_reconstructing(source, empty_folder, monkeypatch):
    monkeypatch.setattr(task, "run_engine", pytest.fail)
    checked = nodes.validate_input(source, {**PARAMS, "dry_run": True}, JOB)

    out = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)

    assert out.record["status"] == "planned" and out.arrays is None


def test_divergence_fails_the_job_and_saves_no_result(
    source, empty_folder, monkeypatch
):
    def diverge(inputs, options, device, on_epoch, cpu_threads):
        on_epoch(np.array([1.0]))
        on_epoch(np.array([1.0, float("nan")]))

    monkeypatch.setattr(task, "run_engine", diverge)
    checked = nodes.validate_input(source, PARAMS, JOB)

    out = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)

    assert out.record["status"] == "failed"
    assert "diverged" in out.record["reason"] and "epoch 1" in out.record["reason"]
    assert out.arrays is None


def test_out_of_memory_fails_with_advice(source, empty_folder, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(task, "run_engine", oom)
    checked = nodes.validate_input(source, PARAMS, JOB)

    out = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)

    assert out.record["status"] == "failed"
    assert "batch_size (now 16)" in out.record["reason"]


def test_out_of_memory_advice_names_workers_per_gpu_and_patterns_on_the_host(
    source, empty_folder, monkeypatch
):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(task, "run_engine", oom)
    out = nodes.reconstruct(
        nodes.validate_input(source, PARAMS, JOB), empty_folder.load(), GEOMETRY
    )

    reason = out.record["reason"]
    assert "--runner-params workers_per_gpu=N" in reason
    assert "ptychi_baseline.lsqml.data_options.save_data_on_device: false" in reason


def test_a_cuda_error_fails_the_job_and_tells_the_runner(
    source, empty_folder, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(task, "run_engine", broken)
    monkeypatch.setattr(devices, "_LOST", {})
    out = nodes.reconstruct(
        nodes.validate_input(source, PARAMS, JOB), empty_folder.load(), GEOMETRY
    )

    assert out.record["status"] == "failed"
    assert "the runner replaces its worker" in out.record["reason"]
    assert devices.lost_context().startswith("RuntimeError: CUDA error")


def test_a_job_whose_worker_died_fails_with_how_and_does_not_run_again(
    source, empty_folder, monkeypatch
):
    monkeypatch.setattr(task, "run_engine", pytest.fail)
    checked = nodes.validate_input(source, PARAMS, JOB)
    how = "the worker process running it (gpu0-2) was killed (SIGKILL ...)"

    with after_lost_worker(how):
        out = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)

    assert (out.record["status"], out.record["reason"]) == ("failed", how)
    assert out.record["input_sha256"] == checked.sha256 and out.arrays is None


def test_max_patterns_is_a_seeded_recorded_subset():
    options = replace(BaselineOptions.from_params(PARAMS), max_patterns=5)

    first, second = nodes.subsample(20, options), nodes.subsample(20, options)

    np.testing.assert_array_equal(first, second)
    assert len(first) == 5 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(nodes.subsample(4, options), np.arange(4))


def test_a_failed_rerun_keeps_the_earlier_reconstruction(empty_folder):
    arrays = {"reconstructed_object": np.ones((4, 4), np.complex64)}
    done = {"status": "succeeded", "input_sha256": "a"}
    empty_folder.save(JobArtifacts(done, arrays=arrays, log="ok\n", provenance=done))

    empty_folder.save(JobArtifacts({"status": "failed", "reason": "NaN"}, log="bad\n"))

    folder = empty_folder.load()
    assert folder.record["status"] == "failed"
    assert folder.provenance == done
    np.testing.assert_array_equal(folder.arrays["reconstructed_object"], 1)
    record_file = f"{empty_folder.folder}/job.json"
    assert json.loads(open(record_file).read())["reason"] == "NaN"


def test_a_job_stops_when_its_loss_stops_improving(source, empty_folder):
    capped = {"reconstructor_options": {"num_epochs": 40, "batch_size": 16}}
    loss_rule = {**PARAMS["convergence"], "rule": "loss", "window": 2, "tolerance": 0.5}
    params = {**PARAMS, "lsqml": capped, "convergence": loss_rule}

    out = nodes.reconstruct(
        nodes.validate_input(source, params, JOB), empty_folder.load(), GEOMETRY
    )

    record = out.record
    assert record["converged"] is True and record["stop_reason"] == "loss_plateau"
    assert record["epochs_run"] == len(out.arrays["loss"]) < 40
    assert record["num_epochs"] == 40  # the cap, as pty-chi was told
    assert record["plateau_epoch"] == record["epochs_run"]


@pytest.mark.parametrize("settled", [1e-9, 50.0])
def test_the_object_rule_stops_a_job_whose_object_settled(
    source, empty_folder, settled
):
    capped = {"reconstructor_options": {"num_epochs": 30, "batch_size": 16}}
    rule = {**PARAMS["convergence"], "rule": "object", "span": 5, "settled": settled}
    params = {**PARAMS, "lsqml": capped, "convergence": rule}

    out = nodes.reconstruct(
        nodes.validate_input(source, params, JOB), empty_folder.load(), GEOMETRY
    )

    record = out.record
    assert record["stop_rule"] == "object"
    assert set(record["object_change"]) == {"low", "high"}
    if settled > 1:  # any change is settled: it stops at its first measurement
        assert record["epochs_run"] == 10 and record["converged"] is True
        assert record["stop_reason"] == "object_settled"
        assert record["object_change"]["low"] < settled
    else:  # nothing ever settles: the cap
        assert record["epochs_run"] == 30 and record["converged"] is False
        assert record["stop_reason"] == "epoch_cap"
    assert record["epochs_run"] == len(out.arrays["loss"])


@pytest.mark.parametrize(("device", "cap"), [("cpu", 2), ("cuda:0", 300)])
def test_a_gpu_has_its_own_epoch_cap(device, cap):
    options = BaselineOptions.from_params(PARAMS)
    ptychi_options = options.ptychi_options("cpu")

    nodes.capped(ptychi_options, device, options.convergence_options().gpu_epoch_cap)

    assert ptychi_options.reconstructor_options.num_epochs == cap


def test_a_job_told_not_to_stop_runs_its_cap_and_says_where_it_plateaued(
    source, empty_folder
):
    capped = {"reconstructor_options": {"num_epochs": 40, "batch_size": 16}}
    judge = {**PARAMS["convergence"], "rule": "loss", "window": 2, "tolerance": 0.5}
    judge["stop"] = False
    params = {**PARAMS, "lsqml": capped, "convergence": judge}

    out = nodes.reconstruct(
        nodes.validate_input(source, params, JOB), empty_folder.load(), GEOMETRY
    )

    record = out.record
    assert record["epochs_run"] == len(out.arrays["loss"]) == 40
    assert record["converged"] is True and record["stop_reason"] == "loss_plateau"
    assert 5 <= record["plateau_epoch"] < 40


def test_a_job_stopped_by_the_cap_while_improving_is_not_converged(
    source, empty_folder
):
    loss_rule = {**PARAMS["convergence"], "rule": "loss", "window": 1, "tolerance": 0.0}
    params = {**PARAMS, "convergence": loss_rule}

    out = nodes.reconstruct(
        nodes.validate_input(source, params, JOB), empty_folder.load(), GEOMETRY
    )

    assert out.record["epochs_run"] == 2
    assert out.record["stop_reason"] == "epoch_cap"
    assert out.record["converged"] is False


def test_the_record_says_how_the_beam_saw_the_scan(source, empty_folder, study_file):
    out = nodes.reconstruct(
        nodes.validate_input(source, PARAMS, JOB), empty_folder.load(), GEOMETRY
    )

    record = out.record
    assert record["probe_diameter_px"] > 0 and 0 < record["overlap"] < 1
    scale = json.loads(str(study_file["_metadata"]))["intensity_scale"]
    counts = (study_file["diffraction"].astype(np.float64) * scale) ** 2
    expected = counts.sum(axis=(1, 2)).mean()
    assert record["photons_per_pattern"] == pytest.approx(expected, rel=1e-5)
    assert record["photons_per_px2"] > 0


def test_a_scan_without_overlap_warns_in_the_record(tmp_path, study_file, empty_folder):
    corners = np.array([8.0, 40.0, 8.0, 40.0]), np.array([8.0, 8.0, 40.0, 40.0])
    apart = {
        **study_file,
        "diffraction": study_file["diffraction"][:4],
        "xcoords": corners[0],
        "ycoords": corners[1],
        "scan_index": study_file["scan_index"][:4],
    }
    path = tmp_path / "apart.npz"
    path.write_bytes(npz_bytes(apart))
    checked = nodes.validate_input(NPZSource(str(path)), PARAMS, JOB)

    out = nodes.reconstruct(checked, empty_folder.load(), GEOMETRY)

    assert out.record["overlap"] == 0.0
    assert any("overlap is 0" in warning for warning in out.record["warnings"])


def test_half_dataset_reconstructions_when_asked(source, empty_folder):
    params = {**PARAMS, "half_dataset_frc": True}

    out = nodes.reconstruct(
        nodes.validate_input(source, params, JOB), empty_folder.load(), GEOMETRY
    )

    halves = out.arrays["half_objects"]
    assert out.record["half_dataset"] is True
    assert halves.shape == (2, 48, 48) and halves.dtype == np.complex64
    assert not np.allclose(halves[0], halves[1])  # different patterns, different noise


def test_half_dataset_auto_is_on_only_without_ground_truth(tmp_path, study_file):
    measured = dict(study_file, objectGuess=np.ones_like(study_file["objectGuess"]))
    options = BaselineOptions.from_params(PARAMS)

    assert options.half_dataset(has_ground_truth(measured)) is True
    assert options.half_dataset(has_ground_truth(study_file)) is False
    with pytest.raises(ValueError, match="half_dataset_frc"):
        BaselineOptions.from_params(merged(PARAMS, {"half_dataset_frc": "sometimes"}))
    with pytest.raises(ValueError, match="convergence: unknown parameter"):
        BaselineOptions.from_params(merged(PARAMS, {"convergence": {"windows": 3}}))


@pytest.mark.parametrize(
    ("spoil", "key", "fragment"),
    [
        (
            lambda a: {
                **a,
                "diffraction": np.fft.ifftshift(a["diffraction"], axes=(1, 2)),
            },
            "diffraction",
            "DC term is in the corner",
        ),
        (lambda a: {**a, "probeGuess": a["probeGuess"] * 0}, "probeGuess", "all zero"),
        (
            lambda a: {
                **a,
                "xcoords": np.full_like(a["xcoords"], 24.0),
                "ycoords": np.full_like(a["ycoords"], 24.0),
            },
            "xcoords",
            "repeat an earlier",
        ),
    ],
)
def test_data_that_would_skew_the_numbers_fail_their_job(
    tmp_path, study_file, spoil, key, fragment
):
    path = tmp_path / "skewed.npz"
    path.write_bytes(npz_bytes(spoil(dict(study_file))))

    checked = nodes.validate_input(NPZSource(str(path)), PARAMS, JOB)

    assert checked.status == "failed"
    assert str(path) in checked.reason and f"{key}:" in checked.reason
    assert fragment in checked.reason


@pytest.fixture(scope="module")
def bright_file() -> dict:
    params = tiny_simulate_params(patch_size=16, object_size=56, rows=8)
    return simulate_phase_c(params, 1e5)["test"]


@pytest.mark.parametrize("positions", ["as recorded", "x and y swapped"])
def test_a_reconstruction_that_does_not_explain_its_patterns_is_flagged(
    tmp_path, bright_file, positions
):
    arrays = dict(bright_file)
    if positions == "x and y swapped":
        arrays["xcoords"], arrays["ycoords"] = arrays["ycoords"], arrays["xcoords"]
    path = tmp_path / "patched_test.npz"
    path.write_bytes(npz_bytes(arrays))
    params = merged(PARAMS, {"lsqml": {"reconstructor_options": {"num_epochs": 40}}})
    folder = JobFolderDataset(path=str(tmp_path / "out"), namespace=JOB.namespace)

    out = nodes.reconstruct(
        nodes.validate_input(NPZSource(str(path)), params, JOB), folder.load(), GEOMETRY
    )

    record = out.record
    assert record["status"] == "succeeded" and record["loss_floor"] > 0
    ratio = record["final_loss"] / record["loss_floor"]
    misfits = [w for w in record["warnings"] if "does not explain" in w]
    if positions == "as recorded":
        assert ratio < 3 and misfits == []
    else:
        assert ratio > 5
        (misfit,) = misfits
        assert f"{ratio:.1f}x what their shot noise allows" in misfit


@pytest.mark.parametrize(
    ("converged", "why"),
    [(False, "still improving when the epoch cap"), (True, "positions that do not")],
)
def test_a_misfit_says_whether_more_epochs_or_other_data_would_help(converged, why):
    record = JobRecord(JOB, JobStatus.PLANNED, loss_floor=0.5)

    assert nodes.misfit_warnings(record, 1.5, converged) == []  # 3x: within reach
    (misfit,) = nodes.misfit_warnings(record, 1.7, converged)
    assert misfit.startswith(
        "does not explain its own patterns: final loss 1.7 is 3.4x"
    )
    assert why in misfit


@pytest.mark.parametrize("kind", ["a directory", "a named pipe (FIFO)", "loop"])
def test_something_not_a_file_where_the_input_belongs_fails_naming_it(tmp_path, kind):
    path = tmp_path / "dense_test.npz"
    if kind == "a directory":
        path.mkdir()
    elif kind == "loop":
        (tmp_path / "other.npz").symlink_to(path)
        path.symlink_to(tmp_path / "other.npz")
    else:
        os.mkfifo(path)

    checked = nodes.validate_input(NPZSource(str(path)), PARAMS, JOB)

    assert checked.status == "failed"  # not "skipped: not found", exit 0
    expected = "Too many levels of symbolic links" if kind == "loop" else kind
    assert checked.reason.startswith(str(path)) and expected in checked.reason


def test_too_few_patterns_fail_before_the_reconstruction_saying_so(
    tmp_path, study_file, empty_folder, monkeypatch
):
    monkeypatch.setattr(task, "run_engine", pytest.fail)
    rows = ("diffraction", "xcoords", "ycoords", "scan_index")
    few = {k: (v[:2] if k in rows else v) for k, v in study_file.items()}
    path = tmp_path / "few.npz"
    path.write_bytes(npz_bytes(few))

    out = nodes.reconstruct(
        nodes.validate_input(NPZSource(str(path)), PARAMS, JOB),
        empty_folder.load(),
        GEOMETRY,
    )

    assert out.record["status"] == "failed"
    assert out.record["reason"].startswith("2 pattern(s) to reconstruct from")
    assert "at least 3" in out.record["reason"]
