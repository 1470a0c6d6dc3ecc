"""Network-grid outputs back onto the source slices, one source slice at a time.

For every source slice, each of its pixels is mapped through the grid's matrix to
a network-grid position; the network's outputs there become probabilities (the
package's activation, applied only to the network voxels that slice touches) and
are interpolated linearly, then decided (arg-max with the background for softmax,
the label's threshold for sigmoid). Interpolating probabilities rather than
labels keeps edges between network voxels where the model put them.

When the mapping is a permuted, flipped scaling (a stack that is not sheared, on
a grid that keeps its directions) a source slice crosses the network grid
between two planes: the two planes' probabilities are blended and then
interpolated along rows and columns, separably. Otherwise (a sheared stack, a
grid MONAI straightened) every pixel is interpolated trilinearly in the block of
the network grid the slice crosses. Both give the same trilinear values.

Memory: one slice's probabilities (labels x rows x columns, float32) at a time;
exclusive (softmax) results are kept as one label map of the source volume
(uint8, or uint16 beyond 255 labels), never one mask per label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.postprocessing.activation import probabilities
from inference.preprocessing.grid import NetworkGrid, permuted_axes
from inference.preprocessing.volume import VolumeGeometry
from inference.spec import Activation, Interpolated

Array = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Linear:
    """1D linear interpolation: for each output, two input indices and the upper weight."""

    lower: npt.NDArray[np.intp]
    upper: npt.NDArray[np.intp]
    weight: Array

    @classmethod
    def along(cls, coordinates: npt.NDArray[np.float64], length: int) -> _Linear:
        """Positions on an axis of ``length`` samples, held at its ends."""
        clamped = np.clip(coordinates, 0.0, length - 1.0)
        lower = np.minimum(np.floor(clamped).astype(np.intp), max(length - 2, 0))
        upper = np.minimum(lower + 1, length - 1)
        return cls(lower, upper, (clamped - lower).astype(np.float32))

    def apply(self, values: Array, axis: int) -> Array:
        shape = [1] * values.ndim
        shape[axis] = len(self.weight)
        weight = self.weight.reshape(shape)
        low = np.take(values, self.lower, axis=axis)
        high = np.take(values, self.upper, axis=axis)
        low *= 1.0 - weight
        high *= weight
        low += high
        return low


def source_probabilities(
    logits: Array,
    grid: NetworkGrid,
    geometry: VolumeGeometry,
    activation: Activation,
    interpolate: Interpolated = Interpolated.PROBABILITIES,
) -> Iterator[Array]:
    """Yield (labels, rows, columns) float32 probabilities for every source slice, in order.

    Parameters
    ----------
    logits : numpy.ndarray
        Raw network outputs on the network grid (outputs, a0, a1, a2).
    grid : NetworkGrid
        The grid the outputs lie on.
    geometry : VolumeGeometry
        The source volume (its ``source_index`` places every source slice).
    activation : Activation
        The package's activation (softmax drops its background channel).
    interpolate : Interpolated
        What is interpolated: probabilities (MONAI's ``Activationsd`` before
        ``Invertd``) or raw outputs, the activation applied after (nnU-Net
        resamples its logits).
    """
    decide = _Activation(activation, interpolate is Interpolated.LOGITS)
    to_network = np.asarray(np.linalg.inv(grid.to_volume), dtype=np.float64)
    rows, columns = geometry.shape[1:]
    axes = permuted_axes(to_network[:3, :3].T)
    if axes is None:
        yield from (decide.after(p) for p in _trilinear(logits, to_network, geometry, decide))
        return
    # axes[m] is the volume axis that network axis m follows.
    slice_axis = axes.index(0)
    row_axis, column_axis = axes.index(1), axes.index(2)
    row_map = _Linear.along(
        to_network[row_axis, 1] * np.arange(rows) + to_network[row_axis, 3],
        logits.shape[1 + row_axis],
    )
    column_map = _Linear.along(
        to_network[column_axis, 2] * np.arange(columns) + to_network[column_axis, 3],
        logits.shape[1 + column_axis],
    )
    planes = _Planes(logits, slice_axis, decide, row_axis < column_axis)
    for index in geometry.source_index:
        position = to_network[slice_axis, 0] * index + to_network[slice_axis, 3]
        plane = planes.at(float(position))  # (labels, row-axis, column-axis)
        # Columns first, on the small plane (a gather along the last axis is the slow
        # one), then rows, which copies whole contiguous rows.
        yield decide.after(row_map.apply(column_map.apply(plane, 2), 1))


@dataclass(frozen=True)
class _Activation:
    """The activation, applied before interpolation or after it."""

    activation: Activation
    on_logits: bool

    def _apply(self, raw: Array) -> Array:
        return probabilities(raw[np.newaxis], self.activation, axis=1)[0]

    def before(self, raw: Array) -> Array:
        """Network-grid values (outputs, ...) to what is interpolated."""
        return raw.astype(np.float32) if self.on_logits else self._apply(raw.astype(np.float32))

    def after(self, values: Array) -> Array:
        """Interpolated values to probabilities (labels, ...)."""
        return self._apply(values) if self.on_logits else values


class _Planes:
    """Network-grid planes across one axis, ready to interpolate; the last two kept.

    Planes are read from the logits in chunks of `CHUNK` (copied contiguous once):
    a plane across the last axis is a strided gather, and reading eight at a time
    touches each cache line once instead of eight times.
    """

    CHUNK = 8

    def __init__(self, logits: Array, axis: int, decide: _Activation, rows_first: bool) -> None:
        self._logits = logits
        self._axis = axis
        self._decide = decide
        self._rows_first = rows_first
        self._cache: dict[int, Array] = {}
        self._chunks: dict[int, Array] = {}

    def _raw(self, index: int) -> Array:
        start = index - index % self.CHUNK
        if start not in self._chunks:
            where: list[slice] = [slice(None)] * self._logits.ndim
            where[1 + self._axis] = slice(start, start + self.CHUNK)
            chunk = np.ascontiguousarray(np.moveaxis(self._logits[tuple(where)], 1 + self._axis, 0))
            if len(self._chunks) >= 2:  # a blend may straddle two chunks
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[start] = chunk
        return self._chunks[start][index - start]

    def _plane(self, index: int) -> Array:
        if index not in self._cache:
            probs = self._decide.before(self._raw(index))
            if not self._rows_first:
                probs = probs.transpose(0, 2, 1)
            if len(self._cache) >= 2:  # keep the two planes used last
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = np.ascontiguousarray(probs)
        return self._cache[index]

    def at(self, position: float) -> Array:
        length = self._logits.shape[1 + self._axis]
        linear = _Linear.along(np.asarray([position]), length)
        low, high, weight = int(linear.lower[0]), int(linear.upper[0]), float(linear.weight[0])
        if weight == 0.0 or low == high:
            return self._plane(low).copy()
        return self._plane(low) * np.float32(1.0 - weight) + self._plane(high) * np.float32(weight)


def _trilinear(
    logits: Array, to_network: Matrix, geometry: VolumeGeometry, decide: _Activation
) -> Iterator[Array]:
    rows, columns = geometry.shape[1:]
    grid_shape = np.asarray(logits.shape[1:])
    row_index = np.arange(rows, dtype=np.float64)[:, np.newaxis]
    column_index = np.arange(columns, dtype=np.float64)[np.newaxis, :]
    for index in geometry.source_index:
        coordinates = np.stack(
            [
                to_network[m, 0] * index
                + to_network[m, 1] * row_index
                + to_network[m, 2] * column_index
                + to_network[m, 3]
                for m in range(3)
            ]
        )
        coordinates = np.clip(coordinates, 0.0, (grid_shape - 1)[:, np.newaxis, np.newaxis])
        low = np.floor(coordinates.reshape(3, -1).min(axis=1)).astype(int)
        high = np.minimum(
            np.ceil(coordinates.reshape(3, -1).max(axis=1)).astype(int), grid_shape - 1
        )
        block = logits[:, low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1]
        probs = decide.before(block)
        local = (coordinates - low[:, np.newaxis, np.newaxis]).astype(np.float32)
        yield np.stack(
            [ndimage.map_coordinates(p, local, order=1, mode="nearest") for p in probs]
        ).astype(np.float32, copy=False)
