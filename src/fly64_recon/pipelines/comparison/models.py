"""The models to compare, and a model's NPZ brought onto the ground truth's grid.

A model's file holds its object under its declared keys (``ObjectKeys``: by default
``reconstructed_object``, complex, 2-D; else ``amplitude`` and ``phase``, real floating
point, 2-D, same shape); when both are there, the complex one is used. The object is on the ground truth's pixel grid, or a
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
from typing import Any

import numpy as np
from scipy import ndimage

from fly64_recon.datasets.model_source import (
    DECLARED_KEYS,
    ObjectKeys,
    declared_pattern,
)
from fly64_recon.record import BASELINE

PLACEHOLDERS = frozenset({"dose", "view", "split", "model"})
MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
OFFSET_KEY = "offset"


class ModelFileError(ValueError):
    """A model's file breaks the input rules; the message names the file and the key."""


def check_models(
    models: Mapping[str, str | Mapping[str, str]] | None,
) -> dict[str, str | Mapping[str, str]]:
    """The declared models (name -> path pattern, or a mapping of ``path`` and the
    object's keys), or a ValueError naming the bad one."""
    checked = {}
    for name, declaration in (models or {}).items():
        where = f"comparison_models.{name}"
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: a model name is a letter then letters, digits, _ or -"
            )
        if name == BASELINE:
            raise ValueError(f"{where}: {BASELINE!r} names the pty-chi baseline")
        _check_declaration(declaration, where)
        pattern = declared_pattern(declaration)
        unknown = placeholders(pattern, where) - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"{where}: {pattern!r} has unknown placeholder(s) {sorted(unknown)}; "
                f"known are {sorted(PLACEHOLDERS)}"
            )
        checked[name] = declaration
    return checked


def _check_declaration(declaration: Any, where: str) -> None:
    if isinstance(declaration, str):
        if not declaration:
            raise ValueError(f"{where}: the path pattern must be a non-empty string")
        return
    if not isinstance(declaration, Mapping):
        raise ValueError(
            f"{where}: a path pattern, or a mapping of {', '.join(DECLARED_KEYS)}"
        )
    unknown = sorted(set(declaration) - set(DECLARED_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}; known are {', '.join(DECLARED_KEYS)}"
        )
    for key, value in declaration.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}.{key} must be a non-empty string")
    if "path" not in declaration:
        raise ValueError(f"{where}: no path (the file's path pattern)")


def placeholders(pattern: str, where: str) -> set[str]:
    """The ``{names}`` of a path pattern."""
    try:
        return {field for _, field, _, _ in string.Formatter().parse(pattern) if field}
    except ValueError as error:
        raise ValueError(
            f"{where}: {pattern!r} is not a path pattern: {error}"
        ) from None


def model_on_grid(
    arrays: Mapping[str, np.ndarray],
    path: str,
    mask: np.ndarray,
    keys: ObjectKeys = ObjectKeys(),  # noqa: B008 - frozen, never changed
) -> tuple[np.ndarray, np.ndarray]:
    """The model's object on the truth's grid (gaps filled) and the mask it is scored on."""
    images = object_images(arrays, path, keys)
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
    canvas[top : top + height, left : left + width] = complex_object(images, keys)
    return fill_nearest(canvas), scored


def object_images(
    arrays: Mapping[str, np.ndarray], path: str, keys: ObjectKeys
) -> dict[str, np.ndarray]:
    """``{object key: c}`` or ``{amplitude key: a, phase key: p}``, checked."""
    if keys.object in arrays:
        image = arrays[keys.object]
        if image.dtype.kind != "c":
            raise ModelFileError(
                f"{path}: key {keys.object!r} has dtype {image.dtype}; it must be "
                "complex (complex64 or complex128)"
            )
        return {keys.object: _two_d(image, keys.object, path)}
    parts = (keys.amplitude, keys.phase)
    if not all(key in arrays for key in parts):
        raise ModelFileError(
            f"{path}: no key {keys.object!r} and no {parts[0]!r} + "
            f"{parts[1]!r} pair; the file has {sorted(arrays)}"
        )
    images = {}
    for key in parts:
        image = arrays[key]
        if image.dtype.kind != "f":
            raise ModelFileError(
                f"{path}: key {key!r} has dtype {image.dtype}; it must be real "
                "floating point (float32 or float64)"
            )
        images[key] = _two_d(image, key, path)
    if images[keys.amplitude].shape != images[keys.phase].shape:
        raise ModelFileError(
            f"{path}: key {keys.phase!r} has shape {images[keys.phase].shape}, key "
            f"{keys.amplitude!r} {images[keys.amplitude].shape}: they must match"
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


def complex_object(images: Mapping[str, np.ndarray], keys: ObjectKeys) -> np.ndarray:
    """The complex object of checked images."""
    if keys.object in images:
        return images[keys.object].astype(np.complex128)
    parts = (keys.amplitude, keys.phase)
    amplitude, phase = (images[key].astype(np.float64) for key in parts)
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
