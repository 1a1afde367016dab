"""Catalog datasets of the project (kedro-datasets has no NPZ dataset)."""

from fly64_recon.datasets.atomic import (
    AtomicWriteError,
    write_atomic,
    write_text_atomic,
)
from fly64_recon.datasets.figure import JobFigureDataset
from fly64_recon.datasets.job_folder import JobArtifacts, JobFolderDataset
from fly64_recon.datasets.job_json import JobJSONDataset
from fly64_recon.datasets.manifest import ManifestEntryDataset
from fly64_recon.datasets.npz import (
    NPZDataset,
    NPZFormatError,
    NPZSource,
    NPZSourceDataset,
    npz_bytes,
    parse_npz,
)
from fly64_recon.datasets.scan_file import MeasuredScan, ScanFileDataset, ScanFileError
from fly64_recon.datasets.study_tree import StudyTreeDataset

__all__ = [
    "AtomicWriteError",
    "JobArtifacts",
    "JobFigureDataset",
    "JobFolderDataset",
    "JobJSONDataset",
    "ManifestEntryDataset",
    "NPZDataset",
    "NPZFormatError",
    "NPZSource",
    "NPZSourceDataset",
    "MeasuredScan",
    "ScanFileDataset",
    "ScanFileError",
    "StudyTreeDataset",
    "npz_bytes",
    "parse_npz",
    "write_atomic",
    "write_text_atomic",
]
