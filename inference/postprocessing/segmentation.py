"""Model-grid probability maps to masks on the source frames.

Probabilities are mapped back (crop the letterbox, resize linearly to the source
grid) before thresholding, so that mask edges fall between source pixels where the
model put them rather than on the coarse model grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from inference.postprocessing.activation import Array, probabilities
from inference.prediction import FrameRef, ModelIdentity, Segmentation
from inference.preprocessing.resize import Fit, to_source
from inference.preprocessing.stacks import Stack
from inference.spec import Activation, ModelSpec


def _masks(spec: ModelSpec, probs: Array) -> npt.NDArray[np.bool_]:
    """probs is (..., labels); softmax labels are exclusive (arg-max), sigmoid ones not."""
    thresholds = np.asarray([label.threshold for label in spec.labels], dtype=np.float32)
    masks = probs >= thresholds
    if spec.output.activation is Activation.SOFTMAX:
        background = 1.0 - probs.sum(axis=-1, keepdims=True)
        winner = np.argmax(np.concatenate([background, probs], axis=-1), axis=-1)
        labels = np.arange(1, probs.shape[-1] + 1)
        masks = winner[..., np.newaxis] == labels
    return np.ascontiguousarray(masks)


def build_segmentation(
    spec: ModelSpec,
    identity: ModelIdentity,
    series_uid: str,
    stack: Stack,
    frames: Sequence[FrameRef],
    source_probs: Array,
    skipped: tuple[str, ...],
    keep_probabilities: bool,
) -> Segmentation:
    """Threshold source-grid probabilities (frames, rows, cols, labels) into masks.

    Parameters
    ----------
    spec, identity : ModelSpec, ModelIdentity
        The model's description and the identity written into results.
    series_uid : str
        The source series.
    stack : Stack
        The stack that ran (for spacing).
    frames : sequence of FrameRef
        The frames that ran, in slice order; fewer than the stack's when some did
        not decode, in which case slice spacing is not given.
    source_probs : numpy.ndarray
        float32 (frames, rows, columns, labels) on the source grid.
    skipped : tuple of str
        Reasons for parts of the series left out.
    keep_probabilities : bool
        Carry the probabilities in the result (for fractional SEG).

    Returns
    -------
    Segmentation
    """
    complete = len(frames) == len(stack.frames)
    return Segmentation(
        model=identity,
        series_instance_uid=series_uid,
        frames=tuple(frames),
        labels=spec.labels,
        masks=_masks(spec, source_probs),
        pixel_spacing_mm=stack.pixel_spacing_mm,
        slice_spacing_mm=stack.slice_spacing_mm if complete and stack.regular else None,
        probabilities=np.ascontiguousarray(source_probs) if keep_probabilities else None,
        skipped=skipped,
    )


def slice_probabilities(spec: ModelSpec, raw: Array, fits: Sequence[Fit]) -> Array:
    """2D outputs (N, channels, h, w) to source-grid probabilities (N, rows, cols, labels)."""
    probs = probabilities(raw, spec.output.activation, axis=1)
    return np.stack(
        [
            np.moveaxis(to_source(p, fit, first_axis=1), 0, -1)
            for p, fit in zip(probs, fits, strict=True)
        ]
    )


def volume_probabilities(spec: ModelSpec, raw: Array, fit: Fit) -> Array:
    """A 3D output (1, channels, d, h, w) to source probabilities (slices, rows, cols, labels)."""
    probs = probabilities(raw, spec.output.activation, axis=1)[0]
    return np.ascontiguousarray(np.moveaxis(to_source(probs, fit, first_axis=1), 0, -1))
