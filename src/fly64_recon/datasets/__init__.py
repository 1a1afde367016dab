"""Catalog datasets of the project (kedro-datasets has no NPZ dataset)."""

from fly64_recon.datasets.atomic import (
    AtomicWriteError,
    write_atomic,
    write_text_atomic,
)
from fly64_recon.datasets.npz import (
    NPZDataset,
    NPZFormatError,
    NPZSource,
    NPZSourceDataset,
    npz_bytes,
    parse_npz,
)

__all__ = [
    "AtomicWriteError",
    "NPZDataset",
    "NPZFormatError",
    "NPZSource",
    "NPZSourceDataset",
    "npz_bytes",
    "parse_npz",
    "write_atomic",
    "write_text_atomic",
]
