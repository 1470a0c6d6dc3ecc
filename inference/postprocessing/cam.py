"""Class activation maps from a feature map and the linear head, without autograd.

For a classifier whose head is global average pooling followed by a linear layer,
the logit of class ``k`` is the spatial mean of ``sum_c w[k, c] * F[c]``; that sum,
kept spatial, is the CAM (Zhou et al., 2016). It needs only the exported feature
map and the head weights, so it works with any backend, TensorRT included.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from inference.preprocessing.resize import Fit, to_source

Array = npt.NDArray[np.float32]


def class_activation_map(features: Array, weights: Array, fit: Fit) -> Array:
    """Return the CAM of one class on the source frame's grid, scaled to [0, 1].

    Parameters
    ----------
    features : numpy.ndarray
        The last feature map of one image, (channels, h, w).
    weights : numpy.ndarray
        The head weights of the class, (channels,).
    fit : Fit
        How the source frame was fitted into the model input.

    Returns
    -------
    numpy.ndarray
        float32 (rows, columns) of the source frame, in [0, 1]; all zero when no
        location supports the class.

    Raises
    ------
    ValueError
        When the channel counts of features and weights differ.
    """
    if features.ndim != 3 or weights.shape != (features.shape[0],):
        raise ValueError(
            f"CAM needs features (C, h, w) and weights (C,), got {features.shape}, {weights.shape}"
        )
    cam = np.maximum(np.tensordot(weights, features, axes=1), 0.0).astype(np.float32)
    source = np.maximum(to_source(cam, fit), 0.0)
    peak = float(source.max())
    return (source / peak).astype(np.float32) if peak > 0 else np.zeros_like(source)
