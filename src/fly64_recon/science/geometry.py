"""The physical geometry of a far-field ptychography scan: what a pixel is in metres.

The study itself is in pixels. A measured scan (CXI, a beamline's files) comes with
its photon energy, detector distance and detector pixel size; a simulated one gets the
nominal values of the ``geometry`` parameters (conf/base/parameters_geometry.yml).
Either way they travel in the DATA-001 file's ``_metadata`` under ``GEOMETRY_KEYS``,
and the object's pixel is the far-field one, lambda z / (N p).

Positions: DATA-001 ``xcoords``/``ycoords`` are probe centres in object pixels of the
``objectGuess`` grid; ptychodus maps a position in metres to object pixels as
``(x_m - centre_x_m) / pixel_m + (W - 1) / 2`` (``ObjectGeometry``, 1.7), so with the
object centred at 0 m a position is ``(xcoords - (W - 1) / 2) * pixel_m``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PLANCK_EV_S = 4.135667696e-15
LIGHT_M_PER_S = 299_792_458.0
JOULES_PER_EV = 1.602176634e-19
GEOMETRY_KEYS = ("photon_energy_eV", "detector_distance_m", "detector_pixel_size_m")
# Where the object's centre pixel is in the scan's own frame (metres): a measured scan's
# positions keep their place; a simulated object is centred at 0.
CENTRE_KEYS = ("object_centre_x_m", "object_centre_y_m")


@dataclass(frozen=True)
class Geometry:
    """Photon energy, detector distance and detector pixel size of a scan."""

    photon_energy_eV: float  # noqa: N815 - the unit's own spelling, as ptychodus's
    detector_distance_m: float
    detector_pixel_size_m: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (
                isinstance(value, int | float) and np.isfinite(value) and value > 0
            ):
                raise ValueError(
                    f"geometry.{name} must be a positive number, not {value!r}"
                )

    @classmethod
    def of(cls, metadata: Mapping[str, Any], nominal: Mapping[str, Any]) -> Geometry:
        """The file's own geometry where its ``_metadata`` has it, else the nominal."""
        return cls(
            **{key: float(metadata.get(key, nominal[key])) for key in GEOMETRY_KEYS}
        )

    @property
    def wavelength_m(self) -> float:
        return PLANCK_EV_S * LIGHT_M_PER_S / self.photon_energy_eV

    def object_pixel_m(self, patch_size: int) -> float:
        """The object's pixel in the far field: lambda z / (N p)."""
        return (
            self.wavelength_m
            * self.detector_distance_m
            / (patch_size * self.detector_pixel_size_m)
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def pixels_to_metres(
    coords_px: np.ndarray, width_px: int, pixel_m: float
) -> np.ndarray:
    """Object-pixel coordinates to metres about the object's centre (ptychodus's frame)."""
    return (np.asarray(coords_px, dtype=np.float64) - (width_px - 1) / 2) * pixel_m


def metres_to_pixels(coords_m: np.ndarray, width_px: int, pixel_m: float) -> np.ndarray:
    """The inverse of :func:`pixels_to_metres`."""
    return np.asarray(coords_m, dtype=np.float64) / pixel_m + (width_px - 1) / 2


def energy_joules_to_ev(energy_j: float) -> float:
    """A CXI file's ``source_1/energy`` (J) in eV."""
    return energy_j / JOULES_PER_EV
