"""Outlines of mask regions, as closed polylines a viewer draws on the key image.

The tracer follows pixel edges ("crack following"), not pixel centres, so that the
outline encloses exactly the region's pixels: its shoelace area equals the pixel
count of the region (holes excluded), which makes the drawn outline and the area
written beside it agree. Vertices are pixel corners, which is DICOM's SCOORD
convention: (0, 0) is the top left corner of the top left pixel, points are
(column, row).

Diagonally touching pixels are kept apart (4-connectivity): at a vertex where two
boundaries meet, the trace turns towards the region it follows, so every outline
is a simple polygon.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))
"""Edge directions clockwise on screen (y down): east, south, west, north."""


@dataclass(frozen=True)
class Outline:
    """The outer boundary of one connected region.

    Attributes
    ----------
    points: numpy.ndarray
        float64, shape (n, 2), (column, row) pixel-corner coordinates; the first
        point is repeated at the end, so the polyline is closed.
    enclosed_pixels: int
        Number of pixels the outline encloses (the region itself, holes included as
        they lie inside the outline).
    """

    points: npt.NDArray[np.float64]
    enclosed_pixels: int


def largest_outline(mask: npt.NDArray[np.bool_]) -> Outline | None:
    """Return the outline of the largest connected region of a 2-D mask.

    Parameters
    ----------
    mask: numpy.ndarray
        Boolean, shape (rows, columns).

    Returns
    -------
    Outline | None
        The outer boundary enclosing the most pixels, or ``None`` for an empty mask.

    Raises
    ------
    ValueError
        If ``mask`` is not two-dimensional.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    starts, directions = _boundary_edges(np.asarray(mask, dtype=bool))
    if len(directions) == 0:
        return None
    best: list[tuple[int, int]] = []
    best_area = 0
    for loop in _loops(starts, directions):
        area = _signed_area(loop)
        if area > best_area:
            best, best_area = loop, area
    points = np.asarray(_corners_only(best), dtype=np.float64)
    return Outline(points=np.vstack([points, points[:1]]), enclosed_pixels=best_area)


def _boundary_edges(
    mask: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return each boundary edge's start corner (x, y) and direction index."""
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    # Region on the right of every edge: outer boundaries run clockwise on screen.
    sides = (
        (inside & ~padded[:-2, 1:-1], (0, 0), 0),  # top side, eastward
        (inside & ~padded[1:-1, 2:], (1, 0), 1),  # right side, southward
        (inside & ~padded[2:, 1:-1], (1, 1), 2),  # bottom side, westward
        (inside & ~padded[1:-1, :-2], (0, 1), 3),  # left side, northward
    )
    starts, directions = [], []
    for exposed, (dx, dy), direction in sides:
        rows, cols = np.nonzero(exposed)
        starts.append(np.column_stack([cols + dx, rows + dy]))
        directions.append(np.full(len(rows), direction))
    return np.concatenate(starts).astype(np.int64), np.concatenate(directions)


def _loops(
    starts: npt.NDArray[np.int64], directions: npt.NDArray[np.int64]
) -> list[list[tuple[int, int]]]:
    """Chain directed edges into closed loops of corner points.

    A bone mask on a CT slice has tens of thousands of edges: the walk runs on
    Python lists, not numpy scalars (several times faster, same loops).
    """
    corners: list[tuple[int, int]] = [(x, y) for x, y in starts.tolist()]
    heading: list[int] = directions.tolist()
    leaving: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, corner in enumerate(corners):
        leaving[corner].append(index)
    used = [False] * len(heading)
    loops = []
    for first in range(len(heading)):
        if used[first]:
            continue
        loop, edge = [], first
        while True:
            used[edge] = True
            x, y = corners[edge]
            loop.append((x, y))
            dx, dy = _STEPS[heading[edge]]
            edge = _next_edge(leaving[(x + dx, y + dy)], heading, edge)
            if edge == first:
                break
        loops.append(loop)
    return loops


def _next_edge(candidates: list[int], heading: list[int], edge: int) -> int:
    """Pick the edge leaving a corner: right turn, then straight, then left."""
    if len(candidates) == 1:
        return candidates[0]
    current = heading[edge]
    preference = {(current + 1) % 4: 0, current: 1, (current + 3) % 4: 2}
    return min(candidates, key=lambda c: preference.get(heading[c], 3))


def _signed_area(loop: list[tuple[int, int]]) -> int:
    """Shoelace area: positive for clockwise-on-screen (outer) loops."""
    xs = np.array([p[0] for p in loop], dtype=np.int64)
    ys = np.array([p[1] for p in loop], dtype=np.int64)
    return int((xs * np.roll(ys, -1) - np.roll(xs, -1) * ys).sum()) // 2


def _corners_only(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop the points where the outline runs straight on."""
    kept = []
    count = len(loop)
    for index, point in enumerate(loop):
        before, after = loop[index - 1], loop[(index + 1) % count]
        straight = (point[0] - before[0], point[1] - before[1]) == (
            after[0] - point[0],
            after[1] - point[1],
        )
        if not straight:
            kept.append(point)
    return kept
