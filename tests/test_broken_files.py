"""A broken file on disk costs its job a recomputation, never the study its run."""

import json

import numpy as np
import pytest

from fly64_recon.datasets import JobArtifacts, JobFolderDataset, JobJSONDataset
from fly64_recon.datasets.job_folder import RECONSTRUCTION_FILE, RECORD_FILE

NAMESPACE = "dose_1e4.dense.test"
RECORD = {"namespace": NAMESPACE, "status": "succeeded", "reason": None}


@pytest.fixture
def folder(tmp_path):
    """A job folder with a reconstruction, its record and its provenance."""
    dataset = JobFolderDataset(path=str(tmp_path), namespace=NAMESPACE)
    arrays = {"reconstructed_object": np.ones((4, 4), np.complex64)}
    dataset.save(JobArtifacts(RECORD, arrays=arrays, provenance=RECORD))
    return dataset, tmp_path / "dose_10000" / "dense" / "test"


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    "broken", [b"{not json", b"\xff\xfe", b'["a list"]'], ids=["json", "utf8", "shape"]
)
def test_a_job_json_that_cannot_be_read_is_set_aside_and_the_job_runs_again(
    folder, caplog, broken
):
    dataset, path = folder
    (path / RECORD_FILE).write_bytes(broken)

    found = dataset.load()

    assert found.record == {}
    assert found.arrays is not None  # the reconstruction itself is still there
    (aside,) = path.glob(f"{RECORD_FILE}.broken-*")
    assert aside.read_bytes() == broken and not (path / RECORD_FILE).exists()
    (warning,) = warnings_of(caplog)
    assert f"{RECORD_FILE} cannot be read" in warning and "runs again" in warning


def test_a_truncated_reconstruction_is_set_aside_and_counts_as_none(folder, caplog):
    dataset, path = folder
    whole = (path / RECONSTRUCTION_FILE).read_bytes()
    (path / RECONSTRUCTION_FILE).write_bytes(whole[: len(whole) // 2])

    found = dataset.load()

    assert found.arrays is None and found.provenance == {}
    assert found.record == RECORD
    assert list(path.glob(f"{RECONSTRUCTION_FILE}.broken-*"))
    (warning,) = warnings_of(caplog)
    assert "truncated or corrupt zip archive" in warning


def test_a_metrics_json_that_cannot_be_read_is_set_aside(tmp_path, caplog):
    dataset = JobJSONDataset(path=str(tmp_path), namespace=NAMESPACE, file="m.json")
    dataset.save({"phase": {"mae": 0.1}})
    path = tmp_path / "dose_10000" / "dense" / "test" / "m.json"
    path.write_text("{")

    assert dataset.load() == {}
    assert list(path.parent.glob("m.json.broken-*")) and not path.exists()
    assert "m.json cannot be read" in warnings_of(caplog)[0]
    dataset.save({"phase": {"mae": 0.2}})
    assert json.loads(path.read_text())["phase"]["mae"] == 0.2
