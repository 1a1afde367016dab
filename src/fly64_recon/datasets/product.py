"""A reconstruction as a ptychodus product file (``product.h5``), written with h5py.

The layout is ptychodus 1.7's (``ptychodus/api/io.py``: ``ProductFileKeys``,
``save_product`` and ``load_product``; ``plugins/h5_product_file.py``), so ptychodus
opens the file as one of its own; ptychodus itself is not needed to write it. Root
attributes: ``name``, ``comments``, ``detector_object_distance_m``,
``photon_energy_eV`` and the older ``probe_energy_eV`` (what ptychodus before the
rename reads), ``probe_photon_count``, ``exposure_time_s``,
``mass_attenuation_m2_per_kg`` and the older ``mass_attenuation_m2_kg``,
``tomography_angle_deg``, ``far_field``. Datasets: ``object`` (layers, H, W) complex64
with ``center_x_m``, ``center_y_m``, ``pixel_width_m``, ``pixel_height_m``;
``object_layer_spacing_m`` (empty: one layer); ``probe`` (1, modes, N, N) complex64
with its pixel sizes; ``probe_position_indexes`` (the row of each pattern in the input
file, by which ptychodus pairs patterns and positions), ``probe_position_x_m`` and
``_y_m``; ``loss_epochs`` and ``loss_values``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import h5py
import numpy as np

PRODUCT_FILE = "product.h5"


@dataclass(frozen=True)
class Product:
    """What a product file holds, in ptychodus's units (metres, eV)."""

    name: str
    comments: str
    detector_distance_m: float
    photon_energy_eV: float  # noqa: N815 - the unit's own spelling, as ptychodus's
    probe_photon_count: float
    object: np.ndarray  # (layers, H, W) complex
    object_pixel_m: float
    object_centre_m: tuple[float, float]  # (x, y) of the object's centre pixel
    probe: np.ndarray  # (1, modes, N, N) complex
    position_indexes: np.ndarray
    position_x_m: np.ndarray
    position_y_m: np.ndarray
    loss: np.ndarray


# Attributes ptychodus reads with a default, written as the defaults say: a study of
# simulated patterns has no exposure time, attenuation or tomography angle.
UNKNOWN_ATTRIBUTES: Mapping[str, float] = {
    "exposure_time_s": 0.0,
    "mass_attenuation_m2_per_kg": 0.0,
    "mass_attenuation_m2_kg": 0.0,
    "tomography_angle_deg": 0.0,
}


def product_bytes(product: Product) -> bytes:
    """The product file's bytes (an HDF5 file made in memory)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs["name"] = product.name
        h5.attrs["comments"] = product.comments
        h5.attrs["detector_object_distance_m"] = product.detector_distance_m
        h5.attrs["photon_energy_eV"] = product.photon_energy_eV
        h5.attrs["probe_energy_eV"] = product.photon_energy_eV
        h5.attrs["probe_photon_count"] = product.probe_photon_count
        for name, value in UNKNOWN_ATTRIBUTES.items():
            h5.attrs[name] = value
        h5.attrs["far_field"] = True
        h5.create_dataset(
            "probe_position_indexes", data=product.position_indexes.astype(np.int64)
        )
        h5.create_dataset("probe_position_x_m", data=product.position_x_m)
        h5.create_dataset("probe_position_y_m", data=product.position_y_m)
        probe = h5.create_dataset("probe", data=product.probe.astype(np.complex64))
        obj = h5.create_dataset("object", data=product.object.astype(np.complex64))
        for dataset in (probe, obj):
            dataset.attrs["pixel_width_m"] = product.object_pixel_m
            dataset.attrs["pixel_height_m"] = product.object_pixel_m
        obj.attrs["center_x_m"], obj.attrs["center_y_m"] = product.object_centre_m
        h5.create_dataset("object_layer_spacing_m", data=np.zeros(0))
        h5.create_dataset("loss_epochs", data=np.arange(len(product.loss)))
        h5.create_dataset("loss_values", data=product.loss.astype(np.float64))
    return buffer.getvalue()
