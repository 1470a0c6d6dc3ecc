"""Surface distances of 3D masks in millimetres, as MONAI computes them.

External validation of a segmentation package reports the Hausdorff distance on the
source volume, in the source voxel spacing. MONAI's ``compute_hausdorff_distance`` is
what ML engineers compare with, but it needs torch, which the node does not; this
module computes the same figure with SciPy: the edge voxels of each mask (the mask
minus its binary erosion, scipy's default cross-shaped structure, inside the union's
bounding box padded by one voxel), the distance of every edge voxel of one mask to
the nearest edge voxel of the other through a k-d tree on spacing-scaled coordinates,
each direction's percentile (linear interpolation, as ``torch.quantile``), and the
larger of the two. Parity with MONAI is tested where MONAI is installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import cKDTree

BoolArray = npt.NDArray[np.bool_]


def _edges(mask: BoolArray) -> BoolArray:
    return np.asarray(mask ^ ndimage.binary_erosion(mask))


def _cropped(a: BoolArray, b: BoolArray) -> tuple[BoolArray, BoolArray]:
    """Both masks cut to the union's bounding box plus one voxel (zeros past the border),
    as MONAI's ``CropForeground(margin=1)`` does before the erosion."""
    where = np.argwhere(a | b)
    low, high = where.min(axis=0) - 1, where.max(axis=0) + 2
    pad = [(max(0, -lo), max(0, hi - n)) for lo, hi, n in zip(low, high, a.shape, strict=True)]
    box = tuple(slice(max(0, lo), min(n, hi)) for lo, hi, n in zip(low, high, a.shape, strict=True))
    return np.pad(a[box], pad), np.pad(b[box], pad)


def _directed(
    points: npt.NDArray[np.float64], other: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    distances, _ = cKDTree(other).query(points)
    return np.asarray(distances, dtype=np.float64)


def hausdorff_mm(
    truth: npt.ArrayLike,
    predicted: npt.ArrayLike,
    spacing: Sequence[float],
    percentile: float | None = 95.0,
) -> float:
    """Symmetric (percentile) Hausdorff distance between two masks of any dimension.

    Parameters
    ----------
    truth, predicted : array_like
        Binary masks of one shape, e.g. (slices, rows, columns).
    spacing : sequence of float
        Millimetres between voxel centres along each axis, in the masks' axis order.
    percentile : float or None
        95 for HD95; ``None`` for the classic (maximum) distance.

    Returns
    -------
    float
        0 when both masks are empty, infinity when exactly one is.

    Raises
    ------
    ValueError
        When the shapes differ or ``spacing`` does not give one value per axis.
    """
    a, b = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    if a.shape != b.shape or len(spacing) != a.ndim:
        raise ValueError(
            f"masks of shapes {a.shape} and {b.shape} with spacing {tuple(spacing)}: "
            "one shape and one spacing per axis are needed"
        )
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    scale = np.asarray(spacing, dtype=np.float64)
    ea, eb = (_edges(m) for m in _cropped(a, b))
    pa, pb = np.argwhere(ea) * scale, np.argwhere(eb) * scale
    per_direction = [_directed(pa, pb), _directed(pb, pa)]
    if percentile is None:
        return float(max(d.max() for d in per_direction))
    return float(max(np.percentile(d, percentile) for d in per_direction))
