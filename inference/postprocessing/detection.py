"""Per-frame box outputs to a Detection in source pixel coordinates, after NMS.

The graph gives ``boxes`` (N, K, 4) as (row_min, col_min, row_max, col_max) in model
input pixels and ``scores`` (N, K, outputs). Boxes are suppressed per frame and
label, then mapped back through the frame's `Fit`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.postprocessing.activation import Array, probabilities
from inference.postprocessing.nms import non_max_suppression
from inference.prediction import Box, Detection, ModelIdentity
from inference.preprocessing.loader import PreparedFrame
from inference.preprocessing.resize import box_to_source
from inference.spec import ModelSpec


def build_detection(
    spec: ModelSpec,
    identity: ModelIdentity,
    series_uid: str,
    prepared: Sequence[PreparedFrame],
    outputs: dict[str, Array],
    skipped: tuple[str, ...],
) -> Detection:
    """Suppress, threshold and map back every frame's boxes.

    Parameters
    ----------
    spec, identity : ModelSpec, ModelIdentity
        The model's description and the identity written into results.
    series_uid : str
        The source series.
    prepared : sequence of PreparedFrame
        The frames that ran, in output order.
    outputs : dict of str to numpy.ndarray
        ``boxes`` (N, K, 4) and ``scores`` (N, K, outputs) by the names in the spec.
    skipped : tuple of str
        Reasons for parts of the series left out.

    Returns
    -------
    Detection
    """
    out = spec.output
    all_boxes = outputs[out.boxes]
    all_scores = probabilities(outputs[out.scores], out.activation, axis=2)
    found: list[Box] = []
    for frame, boxes, scores in zip(prepared, all_boxes, all_scores, strict=True):
        valid = np.all(boxes[:, 2:] > boxes[:, :2], axis=1)
        for index, label in enumerate(spec.labels):
            candidates = np.flatnonzero(valid & (scores[:, index] >= label.threshold))
            kept = non_max_suppression(
                boxes[candidates], scores[candidates, index], out.iou_threshold, out.max_boxes
            )
            for k in kept:
                source = int(candidates[k])
                bounds = box_to_source(tuple(float(v) for v in boxes[source]), frame.fit)  # type: ignore[arg-type]
                found.append(Box(label, float(scores[source, index]), frame.frame.ref, bounds))
    found.sort(key=lambda b: b.score, reverse=True)
    return Detection(
        model=identity,
        series_instance_uid=series_uid,
        frames=tuple(p.frame.ref for p in prepared),
        labels=spec.labels,
        boxes=tuple(found),
        skipped=skipped,
    )
