"""The manifest: every job of the design, merged per job, safe under concurrent writers."""

import json
import multiprocessing
from dataclasses import replace

import pytest
from kedro.io import DatasetError

from fly64_recon.datasets import ManifestEntryDataset
from fly64_recon.record import JobRecord
from fly64_recon.study import StudyDesign

STUDY = {"doses": [1000.0, 10000.0, 100000.0]}
REQUIRED = {
    "dose",
    "view",
    "split",
    "namespace",
    "output_dir",
    "status",
    "reason",
}


def entry(namespace, status="succeeded", **fields):
    return JobRecord.from_dict(
        {"namespace": namespace, "status": status, "reason": None, **fields}
    )


def dataset(path, namespace, **kwargs):
    return ManifestEntryDataset(
        filepath=str(path), namespace=namespace, study=STUDY, **kwargs
    )


def test_one_entry_lists_every_job_of_the_design(tmp_path):
    manifest_path = tmp_path / "reconstruction_manifest.json"

    dataset(manifest_path, "dose_1e4.dense.test").save(
        entry("dose_1e4.dense.test", wall_time_s=1.5)
    )

    manifest = json.loads(manifest_path.read_text())
    assert manifest["total_jobs"] == 18
    assert manifest["counts"]["succeeded"] == 1
    assert manifest["counts"]["not_run"] == 17
    assert set(manifest["versions"]) == {"fly64_recon", "ptychi", "torch"}
    names = [job["namespace"] for job in manifest["jobs"]]
    assert names == [job.namespace for job in StudyDesign.from_params(STUDY).jobs()]
    for job in manifest["jobs"]:
        assert REQUIRED <= set(job)
    dense_test = manifest["jobs"][names.index("dose_1e4.dense.test")]
    assert dense_test["dose"] == 10000.0
    assert dense_test["wall_time_s"] == 1.5
    assert dense_test["output_dir"] == str(tmp_path / "dose_10000" / "dense" / "test")


def test_saving_one_job_keeps_the_others(tmp_path):
    path = tmp_path / "m.json"
    dataset(path, "dose_1e3.baseline.train").save(entry("dose_1e3.baseline.train"))
    dataset(path, "dose_1e5.sparse.test").save(
        entry("dose_1e5.sparse.test", "failed", reason="contract: NaN")
    )
    dataset(path, "dose_1e3.baseline.train").save(
        entry("dose_1e3.baseline.train", "cached")
    )

    manifest = json.loads(path.read_text())
    counts = manifest["counts"]
    assert (counts["cached"], counts["failed"], counts["not_run"]) == (1, 1, 16)
    assert dataset(path, "dose_1e5.sparse.test").load()["reason"] == "contract: NaN"


def test_skip_summary_lists_skipped_jobs_with_reasons(tmp_path):
    path = tmp_path / "m.json"
    dataset(path, "dose_1e3.dense.test").save(
        entry("dose_1e3.dense.test", "skipped", reason="input file not found: x.npz")
    )

    summary = json.loads((tmp_path / "skip_summary.json").read_text())
    assert summary == {
        "skipped_count": 1,
        "skipped_jobs": [
            {
                "namespace": "dose_1e3.dense.test",
                "reason": "input file not found: x.npz",
            }
        ],
    }


def test_a_record_with_metrics_puts_them_in_the_jobs_entry(tmp_path):
    path = tmp_path / "m.json"
    record = entry("dose_1e3.dense.test")
    dataset(path, "dose_1e3.dense.test").save(record)
    dataset(path, "dose_1e3.dense.test").save(
        replace(record, metrics={"phase_mae": 0.1})
    )

    job = dataset(path, "dose_1e3.dense.test").load()
    assert job["status"] == "succeeded"
    assert job["metrics"] == {"phase_mae": 0.1}


def test_unknown_job_has_no_entry(tmp_path):
    with pytest.raises(DatasetError, match="no entry for job dose_1e4.dense.test"):
        dataset(tmp_path / "m.json", "dose_1e4.dense.test").load()


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (b'{"jobs": [', "Expecting value"),
        (b"\xff\xfe not UTF-8", "utf-8"),
        (b"[1, 2]", "not a manifest"),
        (b'{"jobs": {"a": 1}}', "not a manifest"),
        (b'{"jobs": [{"status": "succeeded"}]}', "an entry without a namespace"),
    ],
)
def test_a_broken_manifest_is_set_aside_and_rebuilt_from_the_job_folders(
    tmp_path, caplog, broken, why
):
    path = tmp_path / "m.json"
    path.write_bytes(broken)
    folder = tmp_path / "dose_10000" / "baseline" / "train"
    folder.mkdir(parents=True)
    earlier = entry("dose_1e4.baseline.train", wall_time_s=2.0).to_dict()
    (folder / "job.json").write_text(json.dumps(earlier))

    dataset(path, "dose_1e3.dense.test").save(entry("dose_1e3.dense.test"))

    manifest = json.loads(path.read_text())
    assert manifest["counts"]["succeeded"] == 2  # this job's, and the folder's
    jobs = {job["namespace"]: job for job in manifest["jobs"]}
    assert jobs["dose_1e4.baseline.train"]["wall_time_s"] == 2.0
    (aside,) = tmp_path.glob("m.json.broken-*")
    assert aside.read_bytes() == broken
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "m.json cannot be read" in warning.getMessage()
    assert why in warning.getMessage() and "rebuilt from the job folders" in (
        warning.getMessage()
    )


def _save_many(path: str, namespaces: list[str]) -> None:
    for namespace in namespaces:
        dataset(path, namespace).save(entry(namespace))


def test_concurrent_writers_lose_no_entry(tmp_path):
    path = str(tmp_path / "m.json")
    jobs = [job.namespace for job in StudyDesign.from_params(STUDY).jobs()]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_save_many, args=(path, jobs[i::3])) for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["counts"]["succeeded"] == 18
