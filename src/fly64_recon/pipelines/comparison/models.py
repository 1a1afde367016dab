"""The models to compare, and a model's NPZ brought onto the ground truth's grid.

A model's file holds its object as ``reconstructed_object`` (complex, 2-D) or as
``amplitude`` and ``phase`` (real floating point, 2-D, same shape); when both are there,
``reconstructed_object`` is used. The object is on the ground truth's pixel grid, or a
crop of it: then ``offset`` = (row, col) of the crop's top-left pixel on that grid, in
whole pixels (registration refines the rest). Every other key is ignored, so a
``ptychi_reconstruction.npz`` is a valid model file.

On the grid, the crop's footprint limits the mask it is scored on; a pixel without a
finite value (outside the crop, or NaN/Inf outside the mask) takes the value of the
nearest finite pixel, so the registration's spline shift sees the crop's own edge, as
it sees an image's edge. A crop that covers the mask's bounding box with a margin of
``metrics.SHIFT_PAD_PX`` plus the registration's shift scores exactly as the full grid.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from fly64_recon.record import BASELINE

PLACEHOLDERS = frozenset({"dose", "view", "split", "model"})
MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
OBJECT_KEY = "reconstructed_object"
PARTS_KEYS = ("amplitude", "phase")
OFFSET_KEY = "offset"


class ModelFileError(ValueError):
    """A model's file breaks the input rules; the message names the file and the key."""


def check_models(models: Mapping[str, str] | None) -> dict[str, str]:
    """The declared models (name -> path pattern), or a ValueError naming the bad one."""
    checked = {}
    for name, pattern in (models or {}).items():
        where = f"comparison_models.{name}"
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: a model name is a letter then letters, digits, _ or -"
            )
        if name == BASELINE:
            raise ValueError(f"{where}: {BASELINE!r} names the pty-chi baseline")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}: the path pattern must be a non-empty string")
        unknown = placeholders(pattern, where) - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"{where}: {pattern!r} has unknown placeholder(s) {sorted(unknown)}; "
                f"known are {sorted(PLACEHOLDERS)}"
            )
        checked[name] = pattern
    return checked


def placeholders(pattern: str, where: str) -> set[str]:
    """The ``{names}`` of a path pattern."""
    try:
        return {field for _, field, _, _ in string.Formatter().parse(pattern) if field}
    except ValueError as error:
        raise ValueError(
            f"{where}: {pattern!r} is not a path pattern: {error}"
        ) from None


def model_on_grid(
    arrays: Mapping[str, np.ndarray], path: str, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The model's object on the truth's grid (gaps filled) and the mask it is scored on."""
    images = object_images(arrays, path)
    height, width = next(iter(images.values())).shape
    top, left = crop_offset(arrays, path, (height, width), mask.shape)
    footprint = np.zeros(mask.shape, dtype=bool)
    footprint[top : top + height, left : left + width] = True
    scored = mask & footprint
    if not scored.any():
        raise ModelFileError(
            f"{path}: key {OFFSET_KEY!r} ({top}, {left}) places the {height} x "
            f"{width} px object on no lit pixel of the job"
        )
    inside = scored[top : top + height, left : left + width]
    for key, image in images.items():
        bad = int(np.count_nonzero(~np.isfinite(image[inside])))
        if bad:
            raise ModelFileError(
                f"{path}: key {key!r}: {bad} non-finite value(s) on lit pixels"
            )
    canvas = np.full(mask.shape, np.nan, dtype=np.complex128)
    canvas[top : top + height, left : left + width] = complex_object(images)
    return fill_nearest(canvas), scored


def object_images(arrays: Mapping[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """``{reconstructed_object: c}`` or ``{amplitude: a, phase: p}``, checked."""
    if OBJECT_KEY in arrays:
        image = arrays[OBJECT_KEY]
        if image.dtype.kind != "c":
            raise ModelFileError(
                f"{path}: key {OBJECT_KEY!r} has dtype {image.dtype}; it must be "
                "complex (complex64 or complex128)"
            )
        return {OBJECT_KEY: _two_d(image, OBJECT_KEY, path)}
    if not all(key in arrays for key in PARTS_KEYS):
        raise ModelFileError(
            f"{path}: no key {OBJECT_KEY!r} and no {PARTS_KEYS[0]!r} + "
            f"{PARTS_KEYS[1]!r} pair; the file has {sorted(arrays)}"
        )
    images = {}
    for key in PARTS_KEYS:
        image = arrays[key]
        if image.dtype.kind != "f":
            raise ModelFileError(
                f"{path}: key {key!r} has dtype {image.dtype}; it must be real "
                "floating point (float32 or float64)"
            )
        images[key] = _two_d(image, key, path)
    if images["amplitude"].shape != images["phase"].shape:
        raise ModelFileError(
            f"{path}: key 'phase' has shape {images['phase'].shape}, key 'amplitude' "
            f"{images['amplitude'].shape}: they must match"
        )
    return images


def _two_d(image: np.ndarray, key: str, path: str) -> np.ndarray:
    if image.ndim != 2 or 0 in image.shape:
        raise ModelFileError(
            f"{path}: key {key!r} has shape {image.shape}; it must be a 2-D image"
        )
    return image


def crop_offset(
    arrays: Mapping[str, np.ndarray],
    path: str,
    shape: tuple[int, int],
    grid: tuple[int, int],
) -> tuple[int, int]:
    """Top-left pixel (row, col) of an object of ``shape`` on the truth's ``grid``."""
    if OFFSET_KEY not in arrays:
        if shape != tuple(grid):
            raise ModelFileError(
                f"{path}: the object is {shape[0]} x {shape[1]} px, the ground truth "
                f"{grid[0]} x {grid[1]}: a crop needs key {OFFSET_KEY!r} (row, col of "
                "its top-left pixel)"
            )
        return 0, 0
    offset = np.asarray(arrays[OFFSET_KEY])
    whole = offset.dtype.kind in "iu" or (
        offset.dtype.kind == "f" and np.all(np.isfinite(offset) & (offset % 1 == 0))
    )
    if offset.shape != (2,) or not whole:
        raise ModelFileError(
            f"{path}: key {OFFSET_KEY!r} is {offset.tolist()!r} ({offset.dtype}); it "
            "must be two whole numbers (row, col)"
        )
    top, left = (int(v) for v in offset)
    if top < 0 or left < 0 or top + shape[0] > grid[0] or left + shape[1] > grid[1]:
        raise ModelFileError(
            f"{path}: key {OFFSET_KEY!r} ({top}, {left}) puts the {shape[0]} x "
            f"{shape[1]} px object outside the {grid[0]} x {grid[1]} ground truth"
        )
    return top, left


def complex_object(images: Mapping[str, np.ndarray]) -> np.ndarray:
    """The complex object of checked images."""
    if OBJECT_KEY in images:
        return images[OBJECT_KEY].astype(np.complex128)
    amplitude, phase = (images[key].astype(np.float64) for key in PARTS_KEYS)
    with np.errstate(invalid="ignore"):  # NaN off the lit pixels: filled later
        return amplitude * np.exp(1j * phase)


def fill_nearest(image: np.ndarray) -> np.ndarray:
    """Every non-finite pixel takes the value of its nearest finite one."""
    missing = ~np.isfinite(image)
    if not missing.any():
        return image
    nearest = ndimage.distance_transform_edt(
        missing, return_distances=False, return_indices=True
    )
    return image[tuple(nearest)]
