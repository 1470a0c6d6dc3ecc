"""Raw outputs to per-label probabilities, as the package's activation says."""

from __future__ import annotations

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


def weight_row(label_index: int, activation: Activation) -> int:
    """The output channel (head weight row) of a label: softmax skips background."""
    return label_index + 1 if activation is Activation.SOFTMAX else label_index
