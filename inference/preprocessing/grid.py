"""The network's voxel grid, and resampling a volume onto it.

A package names the grid its network was trained on (`GeometrySpec`): where each
array axis points and the spacing along it. The grid is placed the way the
package's own pipeline placed it, so that the network sees what it saw in training:

* a three-letter ``orientation`` (MONAI's ``Orientationd`` + ``Spacingd``): the
  volume's axes are permuted and flipped to the nearest codes (nibabel's
  ``io_orientation`` rule), then the spacing changes with the directions kept and
  any shear taken out (MONAI's ``zoom_affine``), the grid starting at the corner
  voxel and sized to the volume's extent (MONAI's ``compute_shape_offset``);
* ``"source"`` (nnU-Net): the array axes stay as the stack lies (slice, row,
  column), permuted by ``transpose``; each axis is resized to
  ``round(length * spacing / target)`` voxels with the volume's edges kept (as
  nnU-Net's ``resample_data_or_seg`` and scikit-image's ``resize`` do).

Either way one 4x4 matrix maps a network voxel to a volume voxel, and the way back
is its inverse.

Resampling uses SciPy's ``ndimage``: one well-kept C implementation of spline
interpolation of every order the packages ask for (nnU-Net resamples images with
cubic splines, MONAI linearly) that works in float32 without torch. When the
mapping is a permuted, flipped scaling (every stack that is not sheared) the
volume is viewed in network axis order and ``affine_transform`` takes its
separable zoom path; a sheared stack takes the general matrix. Memory: the
float32 output, plus for cubic splines one float32 copy of the prefiltered input
(SciPy's own prefilter would take float64). SimpleITK would add a second
image model and copy into its own images; torch's ``grid_sample`` holds a float
coordinate grid three times the size of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.preprocessing.volume import VolumeGeometry
from inference.spec import AXIS_LETTERS, SOURCE_ORIENTATION, GeometrySpec

Matrix = npt.NDArray[np.float64]
Array = npt.NDArray[np.float32]
_LPS_POSITIVE = "LPS"
_LPS_NEGATIVE = "RAI"


@dataclass(frozen=True)
class NetworkGrid:
    """The network's voxel grid over one volume.

    Attributes
    ----------
    shape : tuple of int
        Voxels per network axis.
    to_volume : numpy.ndarray
        4x4, network voxel index to volume voxel index (slice, row, column).
    affine : numpy.ndarray
        4x4, network voxel index to LPS mm.
    """

    shape: tuple[int, int, int]
    to_volume: Matrix
    affine: Matrix

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm per network axis."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])


def axis_codes(affine: Matrix) -> str:
    """Where each array axis of an LPS affine points, as three letters (e.g. "LPS").

    Nibabel's ``io_orientation`` rule, which MONAI's ``Orientationd`` uses: the
    closest orthogonal matrix to the direction cosines, then each array axis takes
    the patient axis it changes most, axes taken in order and never twice.
    """
    rzs = np.asarray(affine[:3, :3], dtype=np.float64)
    u, _, vt = np.linalg.svd(rzs / np.linalg.norm(rzs, axis=0))
    closest = u @ vt
    letters = []
    for column in range(3):
        values = closest[:, column]
        world = int(np.argmax(np.abs(values)))
        letters.append((_LPS_POSITIVE if values[world] > 0 else _LPS_NEGATIVE)[world])
        closest[world, :] = 0.0
    return "".join(letters)


def _reorder(shape: tuple[int, ...], codes: str, target: str) -> Matrix:
    """4x4 mapping target-ordered index to source index: permute and flip axes."""
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for axis, letter in enumerate(target):
        source = next(i for i, c in enumerate(codes) if AXIS_LETTERS[c] == AXIS_LETTERS[letter])
        if codes[source] == letter:
            matrix[source, axis] = 1.0
        else:
            matrix[source, axis] = -1.0
            matrix[source, 3] = shape[source] - 1
    return matrix


def _transpose(order: tuple[int, int, int]) -> Matrix:
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for axis, source in enumerate(order):
        matrix[source, axis] = 1.0
    return matrix


def _target_spacing(spec: GeometrySpec, current: npt.NDArray[np.float64]) -> Matrix:
    return np.asarray(
        [current[m] if s == "keep" else float(s) for m, s in enumerate(spec.spacing)],
        dtype=np.float64,
    )


def _spaced_like_monai(
    affine: Matrix, shape: npt.NDArray[np.float64], spacing: Matrix
) -> tuple[Matrix, npt.NDArray[np.float64]]:
    """MONAI ``Spacingd`` (diagonal=False, scale_extent=False): the new grid's affine, shape."""
    rzs = affine[:3, :3]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new = np.eye(4)
    new[:3, :3] = rotation @ np.diag(np.sign(np.diag(zs)) * spacing)
    corners = np.asarray(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(
        3, -1
    )
    corners = np.vstack([corners, np.ones((1, corners.shape[1]))])
    out = np.linalg.solve(new, affine) @ corners
    out_shape = np.round(np.ptp(out[:3], axis=1) + 1.0)
    world = affine @ corners
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(out[:3] - out[:3, i : i + 1], axis=1), 0.0, rtol=1e-3):
            offset = world[:3, i]
            break
    if offset is None:  # no corner is lowest on every axis: align the centres
        offset = rzs @ (shape / 2.0) + affine[:3, 3] - new[:3, :3] @ (out_shape / 2.0)
    new[:3, 3] = offset
    return new, out_shape


def network_grid(geometry: VolumeGeometry, spec: GeometrySpec) -> NetworkGrid:
    """Place the network's grid over a volume, as the package's pipeline did.

    Parameters
    ----------
    geometry : VolumeGeometry
        The volume (affine, shape).
    spec : GeometrySpec
        The package's orientation, transpose and spacing.

    Returns
    -------
    NetworkGrid
    """
    shape = np.asarray(geometry.shape, dtype=np.float64)
    if spec.orientation == SOURCE_ORIENTATION:
        order = spec.transpose
        lengths = shape[list(order)]
        current = np.asarray(geometry.spacing, dtype=np.float64)[list(order)]
        target = _target_spacing(spec, current)
        new_shape = np.maximum(1.0, np.round(lengths * current / target))
        # Edges kept: network voxel o covers volume coordinate (o + 0.5) * n / n' - 0.5.
        scale = lengths / new_shape
        to_volume = np.zeros((4, 4))
        to_volume[3, 3] = 1.0
        for axis, source in enumerate(order):
            to_volume[source, axis] = scale[axis]
            to_volume[source, 3] = 0.5 * scale[axis] - 0.5
        affine = geometry.affine @ to_volume
        return NetworkGrid(_ints(new_shape), to_volume, affine)
    reorder = _reorder(geometry.shape, axis_codes(geometry.affine), spec.orientation)
    reorder = reorder @ _transpose(spec.transpose)
    oriented = geometry.affine @ reorder
    oriented_shape = np.abs(reorder[:3, :3]).T @ shape
    current = np.linalg.norm(oriented[:3, :3], axis=0)
    affine, new_shape = _spaced_like_monai(oriented, oriented_shape, _target_spacing(spec, current))
    to_volume = np.asarray(np.linalg.solve(geometry.affine, affine), dtype=np.float64)
    return NetworkGrid(_ints(np.maximum(new_shape, 1.0)), to_volume, affine)


def _ints(values: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    return int(values[0]), int(values[1]), int(values[2])


def permuted_axes(linear: Matrix) -> list[int] | None:
    """For a permuted diagonal 3x3 matrix (output index to input index), the input
    axis each output axis reads; ``None`` for any other matrix (shear, rotation)."""
    nonzero = np.abs(linear) > 1e-9 * np.abs(linear).max()
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nonzero[:, m])[0]) for m in range(3)]


def resample(volume: Array, to_volume: Matrix, shape: tuple[int, ...], order: int) -> Array:
    """Sample a volume at every voxel of another grid (spline of ``order``, edges held).

    Parameters
    ----------
    volume : numpy.ndarray
        float32 (a0, a1, a2).
    to_volume : numpy.ndarray
        4x4, output voxel index to ``volume`` voxel index.
    shape : tuple of int
        The output grid.
    order : int
        Spline order, 0 (nearest) to 3 (cubic).

    Returns
    -------
    numpy.ndarray
        float32 of ``shape``.
    """
    linear, offset = to_volume[:3, :3], to_volume[:3, 3].copy()
    axes = permuted_axes(linear)
    source: Array = volume
    matrix: Matrix = linear
    if axes is not None:  # view the volume in output axis order: a separable zoom
        source = volume.transpose(axes)
        scales = np.asarray([linear[axes[m], m] for m in range(3)])
        offset = offset[axes]
        flipped = [m for m in range(3) if scales[m] < 0]
        if flipped:
            source = np.flip(source, axis=tuple(flipped))
            for m in flipped:
                offset[m] = source.shape[m] - 1 - offset[m]
        matrix = np.abs(scales)
    if order > 1:
        source = ndimage.spline_filter(source, order, output=np.float32, mode="nearest")
    out: Array = ndimage.affine_transform(
        source,
        matrix,
        offset=offset,
        output_shape=tuple(shape),
        order=order,
        mode="nearest",
        prefilter=False,
        output=np.float32,
    )
    return out
