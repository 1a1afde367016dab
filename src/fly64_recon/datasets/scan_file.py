"""A measured scan as a beamline writes it: a CXI file (read here with h5py), or any of
ptychodus's diffraction and position readers, chosen by name (the optional extra).

Read-only: the ingest pipeline turns a :class:`MeasuredScan` into a DATA-001 study
tree. The CXI paths are those of the CXI 1.6 layout ptychodus 1.7 reads
(``plugins/cxi_file.py``); ptychodus's own readers are used as they are, since each
beamline's files have their own layout, and a copy here would drift from theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from kedro.io import AbstractDataset, DatasetError

from fly64_recon.science.geometry import energy_joules_to_ev

logger = logging.getLogger(__name__)

BUILT_IN_READER = "cxi"
PTYCHODUS_INSTALL = "pip install --no-deps ptychodus==1.7.0"
CXI_PATTERNS = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
CXI_POSITIONS = (
    "entry_1/sample_1/geometry_1/translation",
    "entry_1/data_1/translation",
)
CXI_ENERGY_J = "entry_1/instrument_1/source_1/energy"
CXI_DISTANCE_M = "entry_1/instrument_1/detector_1/distance"
CXI_PIXEL_M = (
    "entry_1/instrument_1/detector_1/x_pixel_size",
    "entry_1/instrument_1/detector_1/y_pixel_size",
)
CXI_MASK = "entry_1/instrument_1/detector_1/mask"
CXI_PROBE = ("entry_1/instrument_1/source_1/illumination", "entry_1/image_1/data")


class ScanFileError(DatasetError, ValueError):
    """A measured scan's file cannot be read as one: names the file, the key and why."""


@dataclass(frozen=True)
class MeasuredScan:
    """What a measured scan gives: counts, positions, and the geometry it states.

    ``counts`` (n, H, W) photon counts with the DC term at the centre; ``positions_m``
    (n, 2) probe positions (y, x) in metres, row i for pattern i; ``geometry`` the
    ``science.geometry.GEOMETRY_KEYS`` the file states; ``bad_pixels`` (H, W) True
    where the detector did not measure; ``probe`` a (H, W) guess when the file has one.
    """

    counts: np.ndarray
    positions_m: np.ndarray
    geometry: dict[str, float]
    bad_pixels: np.ndarray | None
    probe: np.ndarray | None
    source: str
    reader: str


class ScanFileDataset(AbstractDataset[None, MeasuredScan]):
    """The scan at ``filepath``, read by ``reader``: ``cxi`` (built in) or the name of
    a ptychodus diffraction reader (``APS_Velociprobe``, ``MAX_IV_NanoMAX``, ...) with
    its positions from ``positions_filepath`` read by ``positions_reader`` (by default
    the same file and the reader of the same name)."""

    def __init__(
        self,
        filepath: str | None,
        reader: str,
        positions_filepath: str | None = None,
        positions_reader: str | None = None,
    ) -> None:
        self._filepath = filepath
        self._reader = reader
        self._positions_filepath = positions_filepath
        self._positions_reader = positions_reader

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "reader": self._reader}

    def load(self) -> MeasuredScan:
        if not self._filepath:
            raise ScanFileError(
                "ingest.source is not set: kedro run --pipeline ingest --params "
                '"ingest.source=/data/scan.cxi"'
            )
        path = Path(self._filepath)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ScanFileError(f"{path}: ingest.source {what}")
        if self._reader.casefold() == BUILT_IN_READER:
            return read_cxi(path)
        return read_with_ptychodus(
            path,
            self._reader,
            Path(self._positions_filepath or path),
            self._positions_reader or self._reader,
        )

    def save(self, data: None) -> None:
        raise DatasetError("ScanFileDataset is read-only: a measured scan is an input")


def read_cxi(path: Path) -> MeasuredScan:
    """A CXI file's patterns, positions (x, y, z in metres), geometry, mask and probe."""
    try:
        with h5py.File(path, "r") as cxi:
            counts = _dataset(cxi, path, CXI_PATTERNS, ndim=3)
            translation = _dataset(cxi, path, CXI_POSITIONS, ndim=2)
            geometry = _cxi_geometry(cxi)
            mask = cxi[CXI_MASK][()] if CXI_MASK in cxi else None
            probe = _first_mode(_optional(cxi, CXI_PROBE))
    except OSError as error:
        raise ScanFileError(
            f"{path}: not a readable HDF5 (CXI) file: {error}"
        ) from None
    if translation.shape[1] < 2:
        raise ScanFileError(
            f"{path}: {CXI_POSITIONS[0]} must be (n, 3) x, y, z in metres, "
            f"got shape {translation.shape}"
        )
    return MeasuredScan(
        counts=counts,
        positions_m=translation[:, 1::-1].astype(np.float64),
        geometry=geometry,
        bad_pixels=None if mask is None else np.asarray(mask) != 0,
        probe=probe,
        source=str(path),
        reader=BUILT_IN_READER,
    )


def _dataset(cxi: h5py.File, path: Path, keys: Sequence[str], ndim: int) -> np.ndarray:
    """The first of ``keys`` the file has, with ``ndim`` dimensions."""
    key = next((k for k in keys if k in cxi), None)
    if key is None:
        raise ScanFileError(f"{path}: none of {', '.join(keys)} is in the file")
    value = cxi[key]
    if not isinstance(value, h5py.Dataset) or value.ndim != ndim:
        shape = getattr(value, "shape", type(value).__name__)
        raise ScanFileError(f"{path}: {key} must be {ndim}-D, got {shape}")
    return value[()]


def _optional(cxi: h5py.File, keys: Sequence[str]) -> np.ndarray | None:
    key = next((k for k in keys if k in cxi), None)
    return None if key is None else cxi[key][()]


def _first_mode(probe: np.ndarray | None) -> np.ndarray | None:
    """The (N, N) leading mode of a stored probe, (modes, N, N) or (1, modes, N, N)."""
    if probe is None:
        return None
    probe = np.asarray(probe)
    while probe.ndim > 2:
        probe = probe[0]
    return probe.astype(np.complex64)


def _cxi_geometry(cxi: h5py.File) -> dict[str, float]:
    """The geometry keys the file states (energy in J, lengths in m)."""
    found: dict[str, float] = {}
    if CXI_ENERGY_J in cxi:
        found["photon_energy_eV"] = energy_joules_to_ev(float(cxi[CXI_ENERGY_J][()]))
    if CXI_DISTANCE_M in cxi:
        found["detector_distance_m"] = float(cxi[CXI_DISTANCE_M][()])
    pixels = [float(cxi[k][()]) for k in CXI_PIXEL_M if k in cxi]
    if pixels:
        found["detector_pixel_size_m"] = pixels[0]
    return found


def read_with_ptychodus(
    path: Path, reader: str, positions_path: Path, positions_reader: str
) -> MeasuredScan:
    """The scan as ptychodus's readers give it; positions paired with patterns by
    their index, as ptychodus pairs them."""
    registry = _ptychodus_registry(reader)
    try:
        dataset = registry.diffraction_file_readers.get_strategy_by_name(reader).read(
            path
        )
        positions = registry.probe_position_file_readers.get_strategy_by_name(
            positions_reader
        ).read(positions_path)
    except LookupError as error:
        raise ScanFileError(f"{path}: ingest reader: {error}") from None
    except (OSError, ValueError, KeyError) as error:
        raise ScanFileError(f"{path}: ptychodus's {reader} reader: {error}") from None
    counts = np.concatenate([array.get_patterns() for array in dataset])
    indexes = np.concatenate([array.get_indexes() for array in dataset])
    metadata = dataset.get_metadata()
    return MeasuredScan(
        counts=counts,
        positions_m=_paired_positions(positions, indexes, positions_path),
        geometry=_ptychodus_geometry(metadata),
        bad_pixels=dataset.get_bad_pixels(),
        probe=None,
        source=str(path),
        reader=reader,
    )


def _ptychodus_registry(reader: str) -> Any:
    try:
        from ptychodus.api.plugins import PluginRegistry  # noqa: PLC0415 - optional
    except ImportError:
        raise ScanFileError(
            f"ingest.reader {reader!r} is one of ptychodus's readers, which is not "
            f"installed: {PTYCHODUS_INSTALL}"
        ) from None
    # Plugins whose own dependencies are missing say so at WARNING: not ours to show.
    plugins = logging.getLogger("ptychodus")
    level = plugins.level
    plugins.setLevel(logging.ERROR)
    try:
        return PluginRegistry.load_plugins()
    finally:
        plugins.setLevel(level)


def _paired_positions(positions: Any, indexes: np.ndarray, where: Path) -> np.ndarray:
    """(y, x) metres for each pattern index; a pattern without a position is an error."""
    rows = {int(i): row for row, i in enumerate(positions.get_indexes())}
    missing = [int(i) for i in indexes if int(i) not in rows]
    if missing:
        raise ScanFileError(
            f"{where}: no position for {len(missing)} of {len(indexes)} patterns "
            f"(indexes {missing[:5]}...)"
        )
    take = np.array([rows[int(i)] for i in indexes])
    return np.stack(
        [positions.get_coordinates_y_m()[take], positions.get_coordinates_x_m()[take]],
        axis=1,
    ).astype(np.float64)


def _ptychodus_geometry(metadata: Any) -> dict[str, float]:
    found: dict[str, float] = {}
    if metadata.photon_energy_eV:
        found["photon_energy_eV"] = float(metadata.photon_energy_eV)
    if metadata.detector_distance_m:
        found["detector_distance_m"] = float(metadata.detector_distance_m)
    if metadata.detector_pixel_geometry is not None:
        found["detector_pixel_size_m"] = float(metadata.detector_pixel_geometry.width_m)
    return found
