"""A stack as a volume in the patient: its affine, and the way back to each source slice.

The volume's array axes are (slice, row, column), slices in the stack's order (by
position along the slice normal). Its affine maps a voxel index to LPS millimetres:
the column axis runs along the row direction cosines times the column spacing, the
row axis along the column direction cosines times the row spacing, and the slice
axis along the *measured* step between slice positions (first to last slice,
divided evenly, as ITK and MONAI's DICOM reader take it), never along Slice
Thickness, which scanners write for the reconstruction, not for the spacing. A
gantry-tilted (sheared) stack steps off the normal: the affine carries that
shear, and everything mapped through it (resampling to the model's grid, results
back to the source) lands where the pixels are.

A stack whose slice positions stray from that line by more than the package's
tolerance is uneven: refused with the reason, or, where the package allows it,
resampled onto a regular grid along the slice axis (`regular_volume`);
``source_index`` then keeps, per source slice, its fractional index in that
regular volume, so that results go back to every source slice exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.preprocessing.stacks import Stack

Matrix = npt.NDArray[np.float64]
_SHEAR_TOLERANCE = 1e-3  # |off-normal part of the step| / |step| still called orthogonal


class VolumeGeometryError(ValueError):
    """A stack that cannot be a volume (missing geometry, uneven steps, one slice)."""


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a (slice, row, column) volume lies in the patient.

    Attributes
    ----------
    affine : numpy.ndarray
        4x4, voxel index (slice, row, column, 1) to LPS mm.
    shape : tuple of int
        (slices, rows, columns) of the volume the affine describes (the regular
        volume where the stack was resampled).
    source_index : numpy.ndarray
        Per source slice, in stack order, its (fractional) slice index in the volume.
    sheared : bool
        Whether the slice step leaves the normal (gantry tilt).
    """

    affine: Matrix
    shape: tuple[int, int, int]
    source_index: npt.NDArray[np.float64]
    sheared: bool

    @property
    def resampled(self) -> bool:
        """Whether the volume was regularized along the slice axis."""
        return self.shape[0] != len(self.source_index) or not np.allclose(
            self.source_index, np.arange(len(self.source_index))
        )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Length in mm of one voxel step along each array axis."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])


def _frame_vectors(stack: Stack) -> tuple[Matrix, Matrix, Matrix]:
    """Positions (n, 3), and the row/column steps in mm of the stack's first frame."""
    first = stack.frames[0].geometry
    missing = [
        name
        for name, value in (
            ("ImagePositionPatient", all(f.geometry.position for f in stack.frames)),
            ("ImageOrientationPatient", first.orientation),
            ("PixelSpacing", first.pixel_spacing),
        )
        if not value
    ]
    if missing:
        raise VolumeGeometryError(f"a volume needs {', '.join(missing)} on every slice")
    assert first.orientation is not None and first.pixel_spacing is not None
    positions = np.asarray([f.geometry.position for f in stack.frames], dtype=np.float64)
    row_cosines = np.asarray(first.orientation[:3], dtype=np.float64)
    column_cosines = np.asarray(first.orientation[3:], dtype=np.float64)
    row_spacing, column_spacing = first.pixel_spacing
    # Moving down one row steps along the column cosines by the row spacing, and
    # moving right one column steps along the row cosines by the column spacing.
    return positions, column_cosines * row_spacing, row_cosines * column_spacing


def stack_geometry(
    stack: Stack, max_step_deviation: float, *, resample_uneven: bool = False
) -> VolumeGeometry:
    """Fit the affine of a stack from its slice positions.

    Parameters
    ----------
    stack : Stack
        Frames in slice order (from `split_stacks`).
    max_step_deviation : float
        Largest distance of a slice from the fitted line, as a fraction of the
        slice step, for the stack to count as even.
    resample_uneven : bool
        Accept an uneven stack, to be resampled onto a regular slice grid.

    Returns
    -------
    VolumeGeometry

    Raises
    ------
    VolumeGeometryError
        With the reason: fewer than two slices, missing position/orientation/spacing,
        slices that coincide, or uneven steps the package does not resample.
    """
    if len(stack.frames) < 2:
        raise VolumeGeometryError(f"a volume needs two or more slices, got {len(stack.frames)}")
    positions, row_step, column_step = _frame_vectors(stack)
    n = len(positions)
    normal = np.cross(column_step, row_step)
    normal /= np.linalg.norm(normal)
    # Order along the normal is the stack's order; distances measure the real steps.
    distances = positions @ normal
    steps = np.diff(distances)
    if np.any(steps <= 1e-3):
        raise VolumeGeometryError(
            f"slices coincide or are out of order along the normal (smallest step "
            f"{float(steps.min()):.4f} mm)"
        )
    # The step from first to last slice (as MONAI's PydicomReader and ITK take it);
    # each slice's distance from that line says whether the stack is even.
    index = np.arange(n, dtype=np.float64)
    step = (positions[-1] - positions[0]) / (n - 1)
    origin = positions[0]
    off_line = np.linalg.norm(positions - (origin + np.outer(index, step)), axis=1)
    step_length = float(np.linalg.norm(step))
    worst = float(off_line.max()) / step_length
    source_index = index
    count = n
    if worst > max_step_deviation:
        if not resample_uneven:
            raise VolumeGeometryError(
                f"uneven slice steps: a slice lies {worst:.0%} of the {step_length:.3f} mm "
                f"step off a regular grid (steps {_shown(steps)} mm; the package allows "
                f"{max_step_deviation:.0%} and does not resample uneven stacks)"
            )
        # Regular slices at the median step along the line from first to last
        # slice; each source slice sits at a fractional index on that grid.
        along = float(np.median(steps))
        count = max(2, round(float(distances[-1] - distances[0]) / along) + 1)
        step = (positions[-1] - positions[0]) / (count - 1)
        source_index = (distances - distances[0]) / float(step @ normal)
    off_normal = float(np.linalg.norm(step - (step @ normal) * normal)) / float(
        np.linalg.norm(step)
    )
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = (
        step,
        row_step,
        column_step,
        origin,
    )
    rows, columns = stack.shape
    return VolumeGeometry(
        affine, (count, rows, columns), source_index, off_normal > _SHEAR_TOLERANCE
    )


def _shown(steps: npt.NDArray[np.float64]) -> str:
    values = sorted({round(float(s), 2) for s in steps})
    return str(values[:6])[:-1] + (", ...]" if len(values) > 6 else "]")


def regular_volume(
    slices: npt.NDArray[np.float32], geometry: VolumeGeometry
) -> npt.NDArray[np.float32]:
    """Resample source slices (n, ...) onto the geometry's regular slice grid (linear).

    A stack that needed no resampling is returned as it is.
    """
    if not geometry.resampled:
        return slices
    target = np.arange(geometry.shape[0], dtype=np.float64)
    # For each regular slice: the source slices around it and the weight of the upper.
    upper = np.clip(
        np.searchsorted(geometry.source_index, target, side="right"), 1, len(slices) - 1
    )
    lower = upper - 1
    span = geometry.source_index[upper] - geometry.source_index[lower]
    weight = np.clip((target - geometry.source_index[lower]) / span, 0.0, 1.0)
    out = np.empty((geometry.shape[0], *slices.shape[1:]), dtype=np.float32)
    for k, (lo, hi, w) in enumerate(zip(lower, upper, weight, strict=True)):
        out[k] = slices[lo] * np.float32(1.0 - w) + slices[hi] * np.float32(w)
    return out
