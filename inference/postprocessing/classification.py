"""Per-frame classifier outputs to one Classification for the series.

A series is positive for a label when any of its images is (the probability is the
highest over the images); the CAM of a positive label is drawn on the image that
scored highest for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.postprocessing.activation import Array, probabilities, weight_row
from inference.postprocessing.cam import class_activation_map
from inference.prediction import Classification, Heatmap, LabelScore, ModelIdentity
from inference.preprocessing.loader import PreparedFrame
from inference.spec import ModelSpec


def build_classification(
    spec: ModelSpec,
    identity: ModelIdentity,
    series_uid: str,
    prepared: Sequence[PreparedFrame],
    outputs: dict[str, Array],
    cam_weights: Array | None,
    skipped: tuple[str, ...],
) -> Classification:
    """Combine per-frame outputs into a series Classification with CAM heatmaps.

    Parameters
    ----------
    spec, identity : ModelSpec, ModelIdentity
        The model's description and the identity written into results.
    series_uid : str
        The source series.
    prepared : sequence of PreparedFrame
        The frames that ran, in output order.
    outputs : dict of str to numpy.ndarray
        Backend outputs by name: the logits (N, labels) and, with CAM, the feature
        map (N, C, h, w).
    cam_weights : numpy.ndarray or None
        Head weights (outputs, C) when the package declares a CAM.
    skipped : tuple of str
        Reasons for parts of the series left out.

    Returns
    -------
    Classification
    """
    out = spec.output
    probs = probabilities(outputs[out.name], out.activation, axis=1)
    scores: list[LabelScore] = []
    heatmaps: list[Heatmap] = []
    for index, label in enumerate(spec.labels):
        best = int(np.argmax(probs[:, index]))
        probability = float(probs[best, index])
        positive = probability >= label.threshold
        scores.append(LabelScore(label, probability, positive))
        if positive and cam_weights is not None and out.cam is not None:
            frame = prepared[best]
            features = outputs[out.cam.feature_output][best]
            row = cam_weights[weight_row(index, out.activation)]
            heatmaps.append(
                Heatmap(label, frame.frame.ref, class_activation_map(features, row, frame.fit))
            )
    return Classification(
        model=identity,
        series_instance_uid=series_uid,
        frames=tuple(p.frame.ref for p in prepared),
        scores=tuple(scores),
        heatmaps=tuple(heatmaps),
        skipped=skipped,
    )
