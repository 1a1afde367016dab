"""NPZ files for the catalog: a dict-of-arrays dataset and a read-only source handle."""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from fly64_recon.datasets.atomic import write_atomic

# Fixed member timestamps make equal arrays give equal bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # zip features Python cannot read: bad compression, encryption
    RuntimeError,  # zipfile: encrypted member, password required
    MemoryError,  # a member larger than what is free: that job fails, not the run
)


# What stands at a path instead of a file, in words.
_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)"}


class NPZFormatError(DatasetError, ValueError):
    """The file is not a readable NPZ archive of plain arrays."""


def parse_npz(data: bytes, path: str) -> dict[str, np.ndarray]:
    """Read every array of an NPZ archive held in memory, never unpickling, and never
    one whose members declare more bytes than this machine has memory for."""
    _check_zip(data, path)
    _check_declared_sizes(data, path)
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except _READ_ERRORS as exc:
        raise NPZFormatError(f"{path}: not a readable NPZ archive: {exc}") from exc
    with npz:
        return {key: _read_member(npz, key, path) for key in npz.files}


def _check_declared_sizes(data: bytes, path: str) -> None:
    """Refuse, from the .npy headers alone, members that would not fit in memory: a
    header that claims terabytes, or a small file that expands to gigabytes."""
    declared = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.namelist():
            if member.endswith(".npy"):
                try:
                    shape, dtype = _header(archive, member)
                except _READ_ERRORS:
                    continue  # reading it says what is wrong, with the key
                declared[member[:-4]] = math.prod(shape) * dtype.itemsize
    limit = available_memory()
    total = sum(declared.values())
    if limit is not None and total > limit:
        largest = max(declared, key=declared.__getitem__)
        raise NPZFormatError(
            f"{path}: its arrays declare {total / 2**30:.3g} GiB (member {largest!r}: "
            f"{declared[largest] / 2**30:.3g} GiB), more than the {limit / 2**30:.3g} "
            "GiB of memory available here: a broken header, or data too large for "
            "this machine"
        )


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), None where unknown."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):  # noqa: SIM115
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_zip(data: bytes, path: str) -> None:
    """Refuse empty, truncated and non-zip data with a message naming path."""
    if not data:
        raise NPZFormatError(f"{path}: empty file (0 bytes), not an NPZ archive")
    try:
        zipfile.ZipFile(io.BytesIO(data)).close()
    except _READ_ERRORS as exc:
        if data.startswith(b"PK\x03\x04"):
            reason = f"truncated or corrupt zip archive ({len(data)} bytes): {exc}"
        else:
            reason = "not a zip archive (an NPZ file is a zip of .npy members)"
        raise NPZFormatError(f"{path}: {reason}") from exc


def _read_member(npz: Any, key: str, path: str) -> np.ndarray:
    """Read one member; numpy refuses object arrays since allow_pickle is False."""
    try:
        value = npz[key]
    except _READ_ERRORS as exc:
        raise NPZFormatError(f"{path}: member {key!r} cannot be read: {exc}") from exc
    if not isinstance(value, np.ndarray):
        raise NPZFormatError(f"{path}: member {key!r} is not a .npy array")
    return value


def npz_bytes(arrays: Mapping[str, np.ndarray], compress: bool = True) -> bytes:
    """Serialise arrays to NPZ bytes; equal arrays always give equal bytes."""
    members = {key: _plain_array(key, value) for key, value in arrays.items()}
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for key, array in members.items():
            _write_member(archive, key, array, compression)
    return buffer.getvalue()


def _plain_array(key: Any, value: Any) -> np.ndarray:
    """Check a key and convert its value to an array that needs no pickle."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"NPZ keys must be non-empty strings, got {key!r}")
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise ValueError(
            f"array {key!r} has dtype {array.dtype}: object arrays need pickle "
            "and are refused in NPZ files"
        )
    return array


def _write_member(
    archive: zipfile.ZipFile, key: str, array: np.ndarray, compression: int
) -> None:
    """Write one array as `<key>.npy` with a fixed timestamp."""
    info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    with archive.open(info, "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


@dataclass(frozen=True)
class NPZSource:
    """A read-only handle on one NPZ file; opening it is the caller's business."""

    path: str
    storage_options: Mapping[str, Any] = field(
        default_factory=dict, repr=False, compare=False
    )

    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """Build the filesystem (fsspec caches instances) and the path it takes."""
        protocol, path = get_protocol_and_path(self.path)
        fs = fsspec.filesystem(protocol, **self.storage_options)
        return fs, get_filepath_str(PurePosixPath(path), protocol)

    def exists(self) -> bool:
        """Whether the file is there."""
        fs, path = self._fs_path()
        return fs.isfile(path)

    def not_a_file(self) -> str | None:
        """What stands at a local path that is not a regular file (a directory, a
        FIFO, a symbolic link loop); None when a file or nothing is there."""
        protocol, path = get_protocol_and_path(self.path)
        if protocol != "file":
            return None
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return "a symbolic link to nothing" if os.path.islink(path) else None
        except OSError as error:
            return f"cannot be opened: {error.strerror}"
        if stat.S_ISREG(mode):
            return None
        return _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")

    def read_bytes(self) -> bytes:
        """Read the whole file; FileNotFoundError names the path if it is missing."""
        fs, path = self._fs_path()
        try:
            return fs.cat_file(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, "NPZ file not found", self.path
            ) from exc

    def load(self) -> tuple[dict[str, np.ndarray], str]:
        """Return the arrays and the sha256 hex digest of the bytes they came from."""
        data = self.read_bytes()
        return parse_npz(data, self.path), hashlib.sha256(data).hexdigest()

    def load_members(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Read only the named members the file has (zip members are read lazily)."""
        fs, path = self._fs_path()
        try:
            handle = fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, "NPZ file not found", self.path
            ) from exc
        with handle:
            try:
                npz = np.load(handle, allow_pickle=False)
            except _READ_ERRORS as exc:
                raise NPZFormatError(
                    f"{self.path}: not a readable NPZ archive: {exc}"
                ) from exc
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise NPZFormatError(f"{self.path}: a .npy array, not an NPZ archive")
            with npz:
                return {
                    key: _read_member(npz, key, self.path)
                    for key in keys
                    if key in npz.files
                }

    def shapes(self, keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The shapes of the named members the file has, from their .npy headers alone
        (no array is read); empty when the file is missing or unreadable."""
        fs, path = self._fs_path()
        try:
            with fs.open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
                members = set(archive.namelist())
                return {
                    key: _header(archive, f"{key}.npy")[0]
                    for key in keys
                    if f"{key}.npy" in members
                }
        except _READ_ERRORS:
            return {}


def _header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """A member's shape and dtype from its .npy header (no array is read)."""
    with archive.open(member) as handle:
        major, _ = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(handle)
    return tuple(shape), np.dtype(dtype)


def _filesystem(
    filepath: str,
    version: Version | None,
    credentials: dict[str, Any] | None,
    fs_args: dict[str, Any] | None,
) -> tuple[str, str, dict[str, Any]]:
    """Split a catalog filepath into protocol, path and fsspec storage options."""
    protocol, path = get_protocol_and_path(filepath, version)
    options = {**deepcopy(credentials or {}), **deepcopy(fs_args or {})}
    return protocol, path, options


class NPZDataset(
    AbstractVersionedDataset[dict[str, np.ndarray], dict[str, np.ndarray]]
):
    """Loads and saves a dict of NumPy arrays as an NPZ file, atomically, never pickling."""

    def __init__(
        self,
        *,
        filepath: str,
        compress: bool = True,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Point the dataset at filepath (any fsspec protocol)."""
        protocol, path, options = _filesystem(filepath, version, credentials, fs_args)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **options)
        self._compress = compress
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            "compress": self._compress,
            "version": self._version,
        }

    def load(self) -> dict[str, np.ndarray]:
        """Load every array of the file."""
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        try:
            data = self._fs.cat_file(load_path)
        except FileNotFoundError as exc:
            raise DatasetError(f"NPZ file not found: {self._url(load_path)}") from exc
        return parse_npz(data, self._url(load_path))

    def save(self, data: dict[str, np.ndarray]) -> None:
        """Write the arrays to a temporary file and rename it over the target."""
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        target = self._url(save_path)
        if not isinstance(data, Mapping):
            raise DatasetError(
                f"cannot save {type(data).__name__} to {target}: "
                "NPZDataset saves a dict of arrays"
            )
        try:
            payload = npz_bytes(data, compress=self._compress)
        except ValueError as exc:
            raise DatasetError(f"cannot save to {target}: {exc}") from exc
        write_atomic(target, payload, self._fs)
        self._invalidate_cache()

    def _url(self, path: str) -> str:
        """Show a path with its protocol unless it is a local file."""
        return path if self._protocol == "file" else f"{self._protocol}://{path}"

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(load_path)

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        """Invalidate the filesystem's listing cache for this path."""
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))


class NPZSourceDataset(AbstractDataset[None, NPZSource]):
    """Loads a read-only NPZSource handle; a missing file is the consumer's to judge."""

    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Point the handle at filepath (any fsspec protocol)."""
        self._protocol, _, options = _filesystem(filepath, None, credentials, fs_args)
        self._source = NPZSource(str(filepath), options)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._source.path, "protocol": self._protocol}

    def load(self) -> NPZSource:
        """Return the handle without touching the file."""
        return self._source

    def save(self, data: None) -> None:
        """Refuse: the source face of an NPZ file is read-only."""
        raise DatasetError(
            f"NPZSourceDataset({self._source.path}) is read-only; "
            "save through the NPZDataset face of this file"
        )

    def _exists(self) -> bool:
        return self._source.exists()
