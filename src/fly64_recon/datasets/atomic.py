"""Atomic file writes: a temporary sibling, then a rename over the target; and a broken
file set aside, renamed, never deleted."""

from __future__ import annotations

import os
import posixpath
import secrets
import time
from types import ModuleType

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


class AtomicWriteError(OSError):
    """Writing a file atomically failed; the target was left as it was."""


def write_atomic(
    filepath: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None
) -> None:
    """Write bytes to filepath so that readers see the old file or the whole new one."""
    if fs is None:
        fs, path = url_to_fs(filepath)
    else:
        path = fs._strip_protocol(filepath)
    try:
        if isinstance(fs, LocalFileSystem):
            _write_local(path, data)
        else:
            _write_fsspec(fs, path, data)
    except Exception as exc:
        raise _write_error(filepath, exc) from exc


def write_text_atomic(
    filepath: str, text: str, fs: fsspec.AbstractFileSystem | None = None
) -> None:
    """Write UTF-8 text to filepath atomically."""
    write_atomic(filepath, text.encode("utf-8"), fs)


def _temp_sibling(path: str, pathmod: ModuleType) -> str:
    """Name a hidden temporary file next to path."""
    head, name = pathmod.split(path)
    return pathmod.join(head, f".{name}.tmp-{secrets.token_hex(8)}")


def _write_local(path: str, data: bytes) -> None:
    """Write, fsync and os.replace a local file."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    temp = _temp_sibling(path, os.path)
    # O_EXCL: never write through someone else's file; mode 0o666 lets the umask decide.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(temp)
        raise


def _write_fsspec(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a temporary object, then move it over the target."""
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temp = _temp_sibling(path, posixpath)
    try:
        fs.pipe_file(temp, data)
        fs.mv(temp, path)
    except BaseException:
        _remove_temp_object(fs, temp)
        raise


def _remove_quietly(path: str) -> None:
    """Remove a local temporary file if it is there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_temp_object(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove a temporary object without masking the error that got us here."""
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception:  # the original failure is the one worth reporting
        pass


def _write_error(filepath: str, exc: Exception) -> AtomicWriteError:
    """Build an AtomicWriteError that names the target and keeps the errno."""
    errno_ = getattr(exc, "errno", None)
    if errno_ is None:
        return AtomicWriteError(f"could not write {filepath}: {exc}")
    # OSError's str() already leads with "[Errno N]": give the errno once.
    reason = getattr(exc, "strerror", None) or str(exc)
    return AtomicWriteError(errno_, f"could not write {filepath}: {reason}")


def set_aside(filepath: str, fs: fsspec.AbstractFileSystem | None = None) -> str:
    """Rename a file that cannot be read to ``<name>.broken-<UTC time>`` beside it, so
    that the next run recomputes what it held and a person can still look at it; the
    new name."""
    if fs is None:
        fs, path = url_to_fs(filepath)
    else:
        path = fs._strip_protocol(filepath)
    aside = f"{path}.broken-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    fs.mv(path, aside)
    return aside
