"""Fitting frames to the model's input size and mapping results back, exactly.

A `Fit` records, per axis, how source pixels map into model pixels (pixel centres at
half-integers, so ``model = offset + source * scale`` for continuous coordinates).
Masks, probabilities and heatmaps go back through `to_source`, boxes through
`box_to_source`; both undo the same mapping that `to_model` applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from inference.spec import ResizeMode


@dataclass(frozen=True)
class Fit:
    """How the spatial axes of a source grid sit inside the model grid.

    ``content`` is the number of model pixels the source covers per axis, ``offset``
    the padding before it (letterbox), so that the continuous model coordinate of a
    source coordinate ``x`` is ``offset + x * content / source``.
    """

    source: tuple[int, ...]
    model: tuple[int, ...]
    content: tuple[int, ...]
    offset: tuple[int, ...]

    def scale(self, axis: int) -> float:
        """Model pixels per source pixel along an axis."""
        return self.content[axis] / self.source[axis]


def plan_fit(source: tuple[int, ...], model: tuple[int, ...], mode: ResizeMode) -> Fit:
    """Plan how a source grid is fitted into the model grid.

    Parameters
    ----------
    source, model : tuple of int
        Spatial shapes, same length: (rows, columns) or (slices, rows, columns).
    mode : ResizeMode
        ``stretch`` scales each axis on its own; ``letterbox`` keeps the in-plane
        aspect ratio (the last two axes) and pads the rest; slices always stretch.

    Returns
    -------
    Fit

    Raises
    ------
    ValueError
        When the shapes differ in length or hold an empty axis.
    """
    if len(source) != len(model) or min(source + model) < 1:
        raise ValueError(f"cannot fit source shape {source} into model shape {model}")
    if mode is ResizeMode.STRETCH:
        return Fit(source, model, model, (0,) * len(model))
    scale = min(m / s for m, s in zip(model[-2:], source[-2:], strict=True))
    plane = tuple(
        max(1, min(m, round(s * scale))) for m, s in zip(model[-2:], source[-2:], strict=True)
    )
    content = model[:-2] + plane
    offset = tuple((m - c) // 2 for m, c in zip(model, content, strict=True))
    return Fit(source, model, content, offset)


@lru_cache(maxsize=64)
def _weights(size: int, length: int) -> npt.NDArray[np.float32]:
    """(length, size) resampling matrix: a triangle filter, widened when shrinking.

    Pixel centres are aligned (half-pixel convention). Enlarging is plain linear
    interpolation; shrinking by a factor f widens the triangle to f source pixels, so
    that every source pixel contributes (antialiasing) instead of a sparse sample.
    """
    factor = size / length
    support = max(factor, 1.0)
    centres = (np.arange(length, dtype=np.float64) + 0.5) * factor - 0.5
    if factor <= 1.0:
        centres = np.clip(centres, 0.0, size - 1)
    source = np.arange(size, dtype=np.float64)
    weights = np.maximum(0.0, 1.0 - np.abs(source[np.newaxis] - centres[:, np.newaxis]) / support)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def resize_axis(array: npt.NDArray[np.float32], axis: int, length: int) -> npt.NDArray[np.float32]:
    """Resample one axis to ``length`` (linear; antialiased when shrinking).

    Parameters
    ----------
    array : numpy.ndarray
        float32 data.
    axis : int
        The axis to resample.
    length : int
        Its new length.

    Returns
    -------
    numpy.ndarray
        float32 with ``array.shape[axis] == length``.
    """
    size = array.shape[axis]
    if size == length:
        return array
    moved = np.moveaxis(array.astype(np.float32, copy=False), axis, -1)
    out = moved @ _weights(size, length).T
    return np.moveaxis(out, -1, axis)


def resize(
    array: npt.NDArray[np.float32], shape: tuple[int, ...], first_axis: int
) -> npt.NDArray[np.float32]:
    """Resize the spatial axes starting at ``first_axis`` to ``shape``, one axis at a time."""
    out = array
    for i, length in enumerate(shape):
        out = resize_axis(out, first_axis + i, length)
    return out


def to_model(
    array: npt.NDArray[np.float32], fit: Fit, first_axis: int = 0
) -> npt.NDArray[np.float32]:
    """Resize source data into the model grid, zero-padding a letterbox.

    ``array`` holds the spatial axes ``fit.source`` from ``first_axis`` on; other axes
    (channels) are carried along.
    """
    content = resize(array.astype(np.float32, copy=False), fit.content, first_axis)
    if fit.content == fit.model:
        return content
    pad = [(0, 0)] * array.ndim
    for i, (m, c, o) in enumerate(zip(fit.model, fit.content, fit.offset, strict=True)):
        pad[first_axis + i] = (o, m - c - o)
    return np.pad(content, pad)


def crop_content(
    array: npt.NDArray[np.float32], fit: Fit, first_axis: int = 0
) -> npt.NDArray[np.float32]:
    """Bring model-grid data (any resolution covering the model grid) to the model grid
    and cut the letterbox padding away, leaving the content at model resolution."""
    out = resize(array.astype(np.float32, copy=False), fit.model, first_axis)
    index: list[slice] = [slice(None)] * out.ndim
    for i, (c, o) in enumerate(zip(fit.content, fit.offset, strict=True)):
        index[first_axis + i] = slice(o, o + c)
    return out[tuple(index)]


def to_source(
    array: npt.NDArray[np.float32], fit: Fit, first_axis: int = 0
) -> npt.NDArray[np.float32]:
    """Map model-grid data (any resolution covering the model grid) back to the source.

    The data may be coarser than the model input (a CAM feature map): it is first
    brought to the model grid, then the letterbox is cropped and the content resized
    to the source shape.
    """
    return resize(crop_content(array, fit, first_axis), fit.source, first_axis)


def box_to_source(
    bounds: tuple[float, float, float, float], fit: Fit
) -> tuple[float, float, float, float]:
    """Map a box (row_min, column_min, row_max, column_max) from model to source pixels.

    Coordinates are continuous pixel edges; the result is clipped to the source frame.
    """
    rows, columns = fit.source[-2], fit.source[-1]
    row_axis, col_axis = len(fit.source) - 2, len(fit.source) - 1

    def back(value: float, axis: int, limit: int) -> float:
        return float(np.clip((value - fit.offset[axis]) / fit.scale(axis), 0.0, limit))

    r0, c0, r1, c1 = bounds
    return (
        back(r0, row_axis, rows),
        back(c0, col_axis, columns),
        back(r1, row_axis, rows),
        back(c1, col_axis, columns),
    )
