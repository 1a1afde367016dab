"""A job's reconstruction as a ptychodus product (``datasets/product.py`` writes it).

The study is in pixels; the product is in metres: the object's pixel is the far-field
one of the scan's geometry (``science/geometry.py``, in the job's record), and the
positions the reconstruction left (refined when it corrected them) are mapped so that
ptychodus's ``ObjectGeometry.map_probe_positions_to_object_x_px`` gives them back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fly64_recon import __version__
from fly64_recon.datasets.product import Product
from fly64_recon.record import JobRecord
from fly64_recon.science.geometry import CENTRE_KEYS, Geometry, pixels_to_metres


def scan_geometry(
    metadata: Mapping, nominal: Mapping[str, float], patch_size: int
) -> dict[str, float]:
    """The record's geometry: the input's own where its ``_metadata`` has it, else the
    nominal ``geometry`` parameters; the object's pixel in metres; and where the
    object's centre is in the scan's frame (a measured scan's, from ingest; else 0 m)."""
    geometry = Geometry.of(metadata, nominal)
    return {
        **geometry.to_dict(),
        "object_pixel_m": geometry.object_pixel_m(patch_size),
        **{key: float(metadata.get(key, 0.0)) for key in CENTRE_KEYS},
    }


def job_product(record: JobRecord, arrays: Mapping[str, np.ndarray]) -> Product:
    """The product of a job's reconstruction (its record, with its geometry)."""
    geometry = record.geometry
    pixel = geometry["object_pixel_m"]
    obj = arrays["reconstructed_object"]
    height, width = obj.shape
    return Product(
        name=record.namespace,
        comments=(
            f"pty-chi {record.engine} reconstruction by fly64_recon {__version__}; "
            f"options fingerprint {record.options_fingerprint}"
        ),
        detector_distance_m=geometry["detector_distance_m"],
        photon_energy_eV=geometry["photon_energy_eV"],
        probe_photon_count=record.photons_per_pattern or 0.0,
        object=obj[None],
        object_pixel_m=pixel,
        probe=arrays["reconstructed_probe"],
        position_indexes=arrays["pattern_index"],
        object_centre_m=(geometry["object_centre_x_m"], geometry["object_centre_y_m"]),
        position_x_m=pixels_to_metres(arrays["xcoords"], width, pixel)
        + geometry["object_centre_x_m"],
        position_y_m=pixels_to_metres(arrays["ycoords"], height, pixel)
        + geometry["object_centre_y_m"],
        loss=arrays["loss"],
    )
