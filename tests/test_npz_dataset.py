"""NPZ catalog datasets: round trips, refusals, atomic writes, fsspec, transcoding."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version

from fly64_recon.datasets import (
    NPZDataset,
    NPZFormatError,
    NPZSource,
    NPZSourceDataset,
    npz,
    npz_bytes,
    parse_npz,
)
from fly64_recon.datasets.atomic import AtomicWriteError, write_atomic

PROJECT = Path(__file__).resolve().parents[1]


class _CreatesMarker:
    """Unpickling this object creates a file: proof that a payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _arrays() -> dict[str, np.ndarray]:
    """A small DATA-001-like dict of arrays."""
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
    return {
        "diffraction": rng.random((3, 8, 8), dtype=np.float32),
        "probeGuess": probe.astype(np.complex64),
        "xcoords": np.linspace(0.0, 1.0, 3),
        "scan_index": np.arange(3, dtype=np.int64),
        "_metadata": np.array(json.dumps({"dose": 1e4, "seed": 42})),
    }


def _assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]):
    assert loaded.keys() == expected.keys()
    for key, array in expected.items():
        assert loaded[key].dtype == array.dtype, key
        assert loaded[key].shape == array.shape, key
        np.testing.assert_array_equal(loaded[key], array)


def _pickled_npz(marker: Path) -> bytes:
    """An NPZ whose member 'evil' is an object array carrying the marker payload."""
    evil = np.empty(1, dtype=object)
    evil[0] = _CreatesMarker(marker)
    buffer = io.BytesIO()
    np.savez(buffer, ok=np.arange(3), evil=evil)
    return buffer.getvalue()


def test_round_trip_keeps_dtypes_shapes_and_values(tmp_path):
    dataset = NPZDataset(filepath=str(tmp_path / "study" / "patched_train.npz"))
    dataset.save(_arrays())
    loaded = dataset.load()
    _assert_same(loaded, _arrays())
    assert json.loads(loaded["_metadata"].item())["dose"] == 1e4


@settings(max_examples=30, deadline=None)
@given(
    array=hnp.arrays(
        dtype=hnp.scalar_dtypes(),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    )
)
def test_npz_bytes_and_parse_npz_are_inverse(array):
    loaded = parse_npz(npz_bytes({"a": array}), "mem.npz")["a"]
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


def test_compressed_and_uncompressed_load_the_same(tmp_path):
    arrays = {"zeros": np.zeros((64, 64), dtype=np.float32), **_arrays()}
    packed = NPZDataset(filepath=str(tmp_path / "packed.npz"), compress=True)
    plain = NPZDataset(filepath=str(tmp_path / "plain.npz"), compress=False)
    packed.save(arrays)
    plain.save(arrays)
    _assert_same(packed.load(), arrays)
    _assert_same(plain.load(), arrays)
    assert (tmp_path / "packed.npz").stat().st_size < (
        tmp_path / "plain.npz"
    ).stat().st_size


def test_npz_bytes_is_deterministic_and_numpy_readable():
    first = npz_bytes(_arrays())
    assert first == npz_bytes(_arrays())
    with np.load(io.BytesIO(first), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["probeGuess"], _arrays()["probeGuess"])


def test_object_array_is_refused_without_running_its_payload(tmp_path):
    live_marker = tmp_path / "payload_is_live"
    np.load(io.BytesIO(_pickled_npz(live_marker)), allow_pickle=True)["evil"]
    assert live_marker.exists(), "the crafted payload must really create its marker"

    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.npz"
    path.write_bytes(_pickled_npz(marker))
    with pytest.raises(NPZFormatError) as info:
        NPZDataset(filepath=str(path)).load()
    assert str(path) in str(info.value)
    assert "'evil'" in str(info.value)
    with pytest.raises(NPZFormatError, match="'evil'"):
        NPZSource(str(path)).load()
    assert not marker.exists()


def test_saving_an_object_array_is_refused(tmp_path):
    path = tmp_path / "out.npz"
    with pytest.raises(ValueError, match="'names'"):
        npz_bytes({"names": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(DatasetError, match="'names'") as info:
        NPZDataset(filepath=str(path)).save(
            {"names": np.array([None, 1], dtype=object)}
        )
    assert str(path) in str(info.value)
    assert not path.exists()


def test_saving_something_other_than_a_dict_is_refused(tmp_path):
    path = tmp_path / "out.npz"
    with pytest.raises(DatasetError, match="dict of arrays") as info:
        NPZDataset(filepath=str(path)).save(np.arange(3))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (npz_bytes(_arrays())[: len(npz_bytes(_arrays())) // 2], "truncated"),
        (b"diffraction,probeGuess\n1,2\n", "not a zip"),
        (pickle.dumps({"a": 1}), "not a zip"),
    ],
    ids=["empty", "truncated", "text", "pickle"],
)
def test_unreadable_files_are_named_in_the_error(tmp_path, content, reason):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(NPZFormatError, match=reason) as info:
        NPZDataset(filepath=str(path)).load()
    assert str(path) in str(info.value)
    with pytest.raises(NPZFormatError, match=reason):
        NPZSource(str(path)).load()


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=0),
    flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=4),
)
def test_corrupt_bytes_give_arrays_or_npz_format_error(cut, flips):
    data = bytearray(npz_bytes(_arrays()))
    for position, value in flips:
        data[position % len(data)] = value
    data = data[: cut % (len(data) + 1)]
    try:
        parse_npz(bytes(data), "fuzz.npz")
    except NPZFormatError as exc:
        assert "fuzz.npz" in str(exc)


def test_a_member_that_is_not_npy_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(NPZFormatError, match=r"x\.npz: member 'notes\.txt'"):
        parse_npz(buffer.getvalue(), "x.npz")


def test_missing_file_fails_the_arrays_face_but_not_the_source_face(tmp_path):
    path = tmp_path / "dose_1000" / "patched_test.npz"
    with pytest.raises(DatasetError, match="not found") as info:
        NPZDataset(filepath=str(path)).load()
    assert str(path) in str(info.value)

    source = NPZSourceDataset(filepath=str(path)).load()
    assert isinstance(source, NPZSource)
    assert source.path == str(path)
    assert not source.exists()
    with pytest.raises(FileNotFoundError, match="patched_test.npz"):
        source.read_bytes()


def test_source_dataset_is_read_only(tmp_path):
    dataset = NPZSourceDataset(filepath=str(tmp_path / "x.npz"))
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(NPZSource(str(tmp_path / "x.npz")))


def test_exists_follows_the_file(tmp_path):
    path = str(tmp_path / "x.npz")
    arrays_face, source_face = (
        NPZDataset(filepath=path),
        NPZSourceDataset(filepath=path),
    )
    assert not arrays_face.exists()
    assert not source_face.exists()
    arrays_face.save(_arrays())
    assert arrays_face.exists()
    assert source_face.exists()


def test_describe_names_the_file(tmp_path):
    path = str(tmp_path / "x.npz")
    assert "x.npz" in str(NPZDataset(filepath=path, compress=False))
    assert "compress=False" in str(NPZDataset(filepath=path, compress=False))
    assert "x.npz" in str(NPZSourceDataset(filepath=path))


def _fail_with_enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path, monkeypatch, failing
):
    path = tmp_path / "x.npz"
    dataset = NPZDataset(filepath=str(path))
    dataset.save({"generation": np.array(1)})
    before = path.read_bytes()

    monkeypatch.setattr(os, failing, _fail_with_enospc)
    with pytest.raises(DatasetError, match="No space left") as info:
        dataset.save({"generation": np.array(2)})
    monkeypatch.undo()

    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, AtomicWriteError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.npz"]
    assert int(dataset.load()["generation"]) == 1


def test_write_atomic_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    write_atomic(str(target), b"one")
    write_atomic(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["out.bin"]


def test_failed_fsspec_write_removes_the_temp_object(monkeypatch):
    fs = fsspec.filesystem("memory")
    write_atomic("memory:///atomic/out.bin", b"old", fs)
    monkeypatch.setattr(MemoryFileSystem, "mv", _fail_with_enospc)
    with pytest.raises(AtomicWriteError, match="/atomic/out.bin"):
        write_atomic("memory:///atomic/out.bin", b"new", fs)
    assert fs.cat_file("/atomic/out.bin") == b"old"
    assert fs.ls("/atomic", detail=False) == ["/atomic/out.bin"]


def test_memory_filesystem_round_trip():
    url = "memory:///npz_test/dose_1000/patched_train.npz"
    dataset = NPZDataset(filepath=url)
    dataset.save(_arrays())
    _assert_same(dataset.load(), _arrays())

    stored = fsspec.filesystem("memory").cat_file(
        "/npz_test/dose_1000/patched_train.npz"
    )
    _assert_same(parse_npz(stored, url), _arrays())
    arrays, digest = NPZSourceDataset(filepath=url).load().load()
    _assert_same(arrays, _arrays())
    assert digest == hashlib.sha256(stored).hexdigest()


def test_versioned_save_and_load(tmp_path):
    path = str(tmp_path / "x.npz")
    first, second = "2024-01-01T00.00.00.000Z", "2024-01-01T00.00.00.001Z"
    NPZDataset(filepath=path, version=Version(None, first)).save({"v": np.array(1)})
    NPZDataset(filepath=path, version=Version(None, second)).save({"v": np.array(2)})

    assert int(NPZDataset(filepath=path, version=Version(None, None)).load()["v"]) == 2
    assert int(NPZDataset(filepath=path, version=Version(first, None)).load()["v"]) == 1
    assert (tmp_path / "x.npz" / first / "x.npz").is_file()
    with pytest.raises(DatasetError):
        NPZDataset(
            filepath=str(tmp_path / "none.npz"), version=Version(None, None)
        ).load()


def test_source_load_hashes_the_bytes_it_parsed_and_pickles(tmp_path):
    path = tmp_path / "x.npz"
    NPZDataset(filepath=str(path)).save(_arrays())
    source = NPZSourceDataset(filepath=str(path)).load()

    arrays, digest = source.load()
    _assert_same(arrays, _arrays())
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()

    clone = pickle.loads(pickle.dumps(source))
    assert clone == source
    assert clone.load()[1] == digest


def test_catalog_transcoding_gives_both_faces_of_one_file(tmp_path):
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT / "conf"),
        base_env="base",
        default_run_env="local",
        runtime_params={
            "phase_c_root": str(tmp_path / "c"),
            "phase_d_root": str(tmp_path / "d"),
        },
    )
    catalog = DataCatalog.from_config(loader["catalog"])

    catalog.save("phase_c__dose_1000__patched_train@arrays", _arrays())
    source = catalog.load("phase_c__dose_1000__patched_train@source")
    assert isinstance(source, NPZSource)
    assert source.path == str(tmp_path / "c" / "dose_1000" / "patched_train.npz")
    _assert_same(source.load()[0], _arrays())

    catalog.save("phase_d__dose_1000__dense__dense_test@arrays", {"a": np.arange(2)})
    dense = catalog.load("phase_d__dose_1000__dense__dense_test@source")
    assert dense.path == str(tmp_path / "d" / "dose_1000" / "dense" / "dense_test.npz")
    assert dense.exists()


def _npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An NPZ whose one member's header declares ``shape`` over a few real bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": "<f4", "fortran_order": False, "shape": shape},
    )
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("diffraction.npy", header.getvalue() + b"\0" * 64)
    return payload.getvalue()


def test_a_header_that_claims_terabytes_is_refused_naming_the_member():
    with pytest.raises(NPZFormatError) as error:
        parse_npz(_npz_declaring((10**6, 10**6, 10**3)), "huge.npz")

    message = str(error.value)
    assert message.startswith("huge.npz: its arrays declare")
    assert "member 'diffraction'" in message and "GiB of memory available" in message


def test_a_small_file_that_expands_to_more_than_memory_is_refused_unread(monkeypatch):
    monkeypatch.setattr(npz, "available_memory", lambda: 2**20)  # 1 MiB here
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        data = io.BytesIO()
        np.save(data, np.zeros((65, 64, 64), np.float32))  # over 1 MiB of zeros
        archive.writestr("diffraction.npy", data.getvalue())
    assert len(bomb.getvalue()) < 10_000

    with pytest.raises(NPZFormatError, match="more than the 0.000977 GiB"):
        parse_npz(bomb.getvalue(), "bomb.npz")
