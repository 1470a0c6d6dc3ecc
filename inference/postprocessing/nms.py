"""Greedy non-maximum suppression on (row_min, col_min, row_max, col_max) boxes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def iou(box: npt.NDArray[np.float32], others: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Intersection over union of one box with each of ``others``."""
    low = np.maximum(box[:2], others[:, :2])
    high = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(high - low, 0.0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0).astype(np.float32)


def non_max_suppression(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], threshold: float, limit: int
) -> list[int]:
    """Indices of the boxes kept, best first.

    Parameters
    ----------
    boxes : numpy.ndarray
        (K, 4) corners.
    scores : numpy.ndarray
        (K,) scores.
    threshold : float
        A box overlapping a kept box by more than this IoU is dropped.
    limit : int
        At most this many boxes are kept.

    Returns
    -------
    list of int
    """
    order = list(np.argsort(-scores, kind="stable"))
    kept: list[int] = []
    while order and len(kept) < limit:
        best = order.pop(0)
        kept.append(int(best))
        if order:
            overlaps = iou(boxes[best], boxes[order])
            order = [i for i, o in zip(order, overlaps, strict=True) if o <= threshold]
    return kept
