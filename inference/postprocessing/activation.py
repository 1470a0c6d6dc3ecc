"""Raw outputs to per-label probabilities, as the package's activation says."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from inference.spec import Activation

Array = npt.NDArray[np.float32]


def probabilities(raw: Array, activation: Activation, axis: int = 1) -> Array:
    """Return one probability channel per label along ``axis``.

    ``softmax`` outputs carry a background channel 0, which is dropped after the
    softmax; ``sigmoid`` outputs have one independent channel per label.
    """
    if activation is Activation.SIGMOID:
        # 1 / (1 + exp(-x)) in one buffer: the same operations in the same dtype as
        # the plain expression, without its four temporaries (a 2D batch of CT
        # slices is tens of megabytes).
        out = np.clip(raw, -60.0, 60.0)
        np.negative(out, out=out)
        np.exp(out, out=out)
        np.add(out, 1.0, out=out)
        np.divide(1.0, out, out=out)
        return out.astype(np.float32, copy=False)
    if activation is Activation.SOFTMAX:
        shifted = np.exp(raw - raw.max(axis=axis, keepdims=True))
        soft = shifted / shifted.sum(axis=axis, keepdims=True)
        return np.delete(soft, 0, axis=axis).astype(np.float32)
    return np.clip(raw, 0.0, 1.0).astype(np.float32)


SIGMOID_ERROR = 1e-6
"""A bound, far above float32's, on how far `probabilities`' sigmoid strays from
the exact one (relative): decisions further than this from a threshold are sure."""


def sigmoid_at_least(
    raw: Array, thresholds: Sequence[float], axis: int = 1
) -> npt.NDArray[np.bool_]:
    """``probabilities(raw, SIGMOID) >= threshold`` per channel, without most of the sigmoid.

    A logit clearly above (below) the threshold's logit is a sure yes (no): only
    logits within a margin of it, where float32 rounding could tip the decision,
    go through `probabilities` and the same float32 comparison, so the masks are
    exactly those of the full computation at a fraction of its cost (a CT slice
    of a threshold model has a few such pixels; a margin that covers everything
    just computes it all).
    """
    out = np.empty(raw.shape, dtype=np.bool_)
    for channel, threshold in enumerate(thresholds):
        level = np.float32(threshold)
        t = float(level)
        slope = t * (1.0 - t)  # d sigmoid / dx at the threshold's logit
        margin = max(1e-3, 100 * SIGMOID_ERROR / slope) if slope > 0 else math.inf
        logit = math.log(t / (1.0 - t)) if 0.0 < t < 1.0 else 0.0
        index = [slice(None)] * raw.ndim
        index[axis] = slice(channel, channel + 1)
        values, decided = raw[tuple(index)], out[tuple(index)]
        np.greater_equal(values, logit + margin, out=decided)
        # Inside the margin: above its low end and not at or above its high end. Two
        # comparisons and a boolean pass, no float temporary (as fast as the plain
        # ``logits > 0`` twice over, instead of eleven times: benchmarks.pipeline).
        near = np.greater(values, logit - margin)
        np.not_equal(near, decided, out=near)
        if near.any():
            decided[near] = probabilities(values[near], Activation.SIGMOID) >= level
    return out


def weight_row(label_index: int, activation: Activation) -> int:
    """The output channel (head weight row) of a label: softmax skips background."""
    return label_index + 1 if activation is Activation.SOFTMAX else label_index
