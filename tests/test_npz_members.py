"""NPZSource.load_members: only the named members, never unpickling."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from fly64_recon.datasets import NPZFormatError, NPZSource, npz_bytes


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "diffraction": rng.random((4, 8, 8), dtype=np.float32),
        "objectGuess": (rng.random((16, 16)) * np.exp(1j)).astype(np.complex64),
        "_metadata": np.array(json.dumps({"dose": 1e3})),
    }


@pytest.fixture(params=[True, False], ids=["compressed", "stored"])
def source(tmp_path, request):
    path = tmp_path / "study.npz"
    path.write_bytes(npz_bytes(_arrays(), compress=request.param))
    return NPZSource(str(path))


def test_reads_only_the_named_members_the_file_has(source):
    members = source.load_members(["objectGuess", "_metadata", "Y"])

    assert set(members) == {"objectGuess", "_metadata"}
    np.testing.assert_array_equal(members["objectGuess"], _arrays()["objectGuess"])
    assert json.loads(members["_metadata"].item()) == {"dose": 1e3}


def test_the_other_members_are_not_decompressed(source, monkeypatch):
    read = []
    original = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        read.append(name if isinstance(name, str) else name.filename)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    source.load_members(["objectGuess"])

    assert read == ["objectGuess.npy"]


def test_an_object_array_member_is_refused(tmp_path):
    evil = np.empty(1, dtype=object)
    evil[0] = {"not": "an array"}
    buffer = io.BytesIO()
    np.savez(buffer, objectGuess=evil)
    path = tmp_path / "evil.npz"
    path.write_bytes(buffer.getvalue())

    with pytest.raises(NPZFormatError, match="'objectGuess'"):
        NPZSource(str(path)).load_members(["objectGuess"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a readable NPZ"),
        (b"PK\x03\x04 truncated", "not a readable NPZ"),
        (pickle.dumps({"a": 1}), "not a readable NPZ"),
    ],
    ids=["empty", "truncated", "pickle"],
)
def test_unreadable_files_are_refused_naming_the_path(tmp_path, data, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(data)

    with pytest.raises(NPZFormatError, match=message) as info:
        NPZSource(str(path)).load_members(["objectGuess"])
    assert str(path) in str(info.value)


def test_a_plain_npy_file_is_not_an_npz(tmp_path):
    path = tmp_path / "array.npz"
    with path.open("wb") as handle:
        np.save(handle, np.arange(3))

    with pytest.raises(NPZFormatError, match="not an NPZ archive"):
        NPZSource(str(path)).load_members(["objectGuess"])


def test_a_missing_file_raises_file_not_found_with_its_path(tmp_path):
    path = tmp_path / "nowhere.npz"

    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        NPZSource(str(path)).load_members(["objectGuess"])
