"""Sigmoid decisions taken on the logits are exactly those taken on the probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.postprocessing.activation import probabilities, sigmoid_at_least
from inference.spec import Activation


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.9, 0.999, 0.001, 0.9999999, 1e-7])
def test_decisions_equal_thresholded_probabilities(threshold: float) -> None:
    rng = np.random.default_rng(11)
    logit = math.log(threshold / (1 - threshold))
    # Wide logits, and every float32 within a few thousand ulps of the threshold's logit.
    near = np.float32(logit) + np.arange(-3000, 3000, dtype=np.float32) * np.spacing(
        np.float32(max(abs(logit), 1e-3))
    )
    wide = rng.normal(logit, 30.0, 4 * 2 * 64 * 64 - near.size).astype(np.float32)
    raw = np.concatenate([near, wide]).reshape(4, 2, 64, 64)
    expected = probabilities(raw, Activation.SIGMOID) >= np.float32(threshold)
    decided = sigmoid_at_least(raw, [threshold, threshold], axis=1)
    assert decided.dtype == np.bool_
    np.testing.assert_array_equal(decided, expected)
    assert expected.any() and not expected.all()


def test_each_channel_takes_its_own_threshold() -> None:
    raw = np.full((1, 2, 4, 4), -1.0, dtype=np.float32)
    raw[0, :, :2] = 0.1  # sigmoid 0.525: above 0.5, below 0.6
    decided = sigmoid_at_least(raw, [0.5, 0.6], axis=1)
    assert decided[0, 0, :2].all() and not decided[0, 0, 2:].any()
    assert not decided[0, 1].any()
