"""A job's record: the JSON keys of job.json and the manifest, statuses, the worker."""

import json
from dataclasses import replace

import pytest
from kedro.pipeline import Node, Pipeline

from fly64_recon.hooks import JobsFailedError, StudyRunHooks
from fly64_recon.record import (
    JOB_TAG,
    OUTCOMES,
    JobRecord,
    JobStatus,
    current_worker,
    job_fields,
    running_on,
)
from fly64_recon.study import Job

JOB = Job(10000.0, "dense", "test")
RECORD_KEYS = {
    "namespace",
    "dose",
    "view",
    "split",
    "input_npz",
    "input_sha256",
    "engine",
    "num_epochs",
    "batch_size",
    "object_init",
    "max_patterns",
    "subsample_seed",
    "options_fingerprint",
    "probe_modes",
    "probe_power_rescale",
    "position_correction",
    "n_patterns",
    "n_patterns_total",
    "device",
    "worker",
    "status",
    "reason",
    "warnings",
    "wall_time_s",
    "peak_gpu_memory_mb",
    "peak_gpu_memory_reserved_mb",
    "warmup_s",
    "final_loss",
    "loss_floor",
    "epochs_run",
    "stop_rule",
    "stop_reason",
    "converged",
    "object_change",
    "plateau_epoch",
    "probe_diameter_px",
    "overlap",
    "photons_per_pattern",
    "photons_per_px2",
    "geometry",
    "half_dataset",
    "started_at",
    "finished_at",
}


def test_a_record_is_the_json_of_job_json_and_reads_back():
    record = JobRecord(JOB, JobStatus.FAILED, "NaN", num_epochs=3, warnings=["w"])

    written = json.loads(json.dumps(record.to_dict()))

    assert set(written) == RECORD_KEYS
    assert written["namespace"] == "dose_1e4.dense.test"
    assert [written[key] for key in ("dose", "view", "split")] == [1e4, "dense", "test"]
    assert written["status"] == "failed" and type(written["status"]) is str
    assert JobRecord.from_dict({**written, "output_dir": "/x"}) == record


def test_metrics_appear_in_the_json_only_once_measured():
    record = JobRecord(JOB, JobStatus.SUCCEEDED)

    assert "metrics" not in record.to_dict()
    assert replace(record, metrics={"a": 1}).to_dict()["metrics"] == {"a": 1}


def test_the_manifest_counts_every_status_but_ready_in_todays_order():
    assert [status.value for status in OUTCOMES] == [
        "succeeded",
        "failed",
        "skipped",
        "cached",
        "planned",
        "not_run",
    ]
    assert f"{JobStatus.CACHED}" == "cached"
    assert [s for s in JobStatus if s.has_reconstruction] == [
        JobStatus.SUCCEEDED,
        JobStatus.CACHED,
    ]


def test_a_job_records_the_worker_its_runner_placed_it_on():
    assert current_worker() == "local"
    with running_on("gpu3"):
        assert current_worker() == "gpu3"
    assert current_worker() == "local"


def _job_pipeline(namespace: str) -> Pipeline:
    return Pipeline(
        [
            Node(lambda: 1, None, "a", name="step", tags=JOB_TAG),
            Node(lambda a: a, "a", "b", name="other"),
        ],
        namespace=namespace,
    )


def test_hooks_count_tagged_jobs_and_fail_the_run_for_their_failed_records():
    hooks = StudyRunHooks()
    pipeline = _job_pipeline(JOB.namespace)
    hooks.before_pipeline_run(pipeline)
    failed = JobRecord(JOB, JobStatus.FAILED, "diverged")
    elsewhere = JobRecord(Job(1000.0, "dense", "test"), JobStatus.FAILED, "not ours")

    hooks.after_node_run({"x": failed, "y": elsewhere, "z": {"status": "failed"}})

    with pytest.raises(JobsFailedError) as failure:
        hooks.after_pipeline_run()
    message = str(failure.value)
    assert message.startswith("1 of 1 reconstruction job(s) failed")
    assert "dose_1e4.dense.test: diverged" in message and "not ours" not in message


def test_a_record_written_with_algorithm_reads_back_with_its_engine():
    old = {**job_fields(JOB), "status": "succeeded", "algorithm": "EPIE"}

    assert JobRecord.from_dict(old).engine == "EPIE"
    assert "algorithm" not in JobRecord.from_dict(old).to_dict()
