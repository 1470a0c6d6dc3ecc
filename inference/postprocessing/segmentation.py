"""Model-grid probability maps to masks on the source frames.

Probabilities are mapped back (crop the letterbox, resize linearly to the source
grid) before thresholding, so that mask edges fall between source pixels where the
model put them rather than on the coarse model grid. Frames are mapped and
thresholded one at a time: a 300-slice CT never holds its float probabilities at
source resolution unless the caller asks for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.postprocessing.activation import Array, probabilities, sigmoid_at_least
from inference.prediction import FrameRef, ModelIdentity, Segmentation
from inference.preprocessing.resize import Fit, crop_content, resize, resize_axis, to_source
from inference.preprocessing.stacks import Stack
from inference.spec import Activation, ModelSpec


def _masks(spec: ModelSpec, probs: Array | npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Independent labels: each probability (..., labels) at its label's threshold.

    Masks decided already (`slice_probabilities` on the model's own grid) pass as
    they are.
    """
    if probs.dtype == np.bool_:
        return np.asarray(probs, dtype=np.bool_)  # no copy
    thresholds = np.asarray([label.threshold for label in spec.labels], dtype=np.float32)
    return np.asarray(probs >= thresholds)


def label_map_dtype(labels: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned type holding label numbers 0..labels."""
    return np.uint8 if labels < 256 else np.uint16


def _winners(probs: Array, dtype: type[np.unsignedinteger[Any]]) -> npt.NDArray[Any]:
    """Exclusive labels (softmax, background implied): the arg-max, 0 for background.

    probs is (..., labels) without the background, which is 1 - their sum; a tie
    goes to the background, then to the lower label, as arg-max over all does.
    One pass per label over (..., ) planes: fast whether the labels are the
    contiguous axis (2D path) or the outermost one behind a view (3D path).
    """
    planes = [probs[..., index] for index in range(probs.shape[-1])]
    best = np.ones(probs.shape[:-1], dtype=np.float32)
    for plane in planes:
        best -= plane
    winner = np.zeros(probs.shape[:-1], dtype=dtype)
    for number, plane in enumerate(planes, start=1):
        better = plane > best
        winner[better] = number
        np.maximum(best, plane, out=best)
    return winner


def decide_segmentation(
    spec: ModelSpec,
    identity: ModelIdentity,
    series_uid: str,
    stack: Stack,
    source_probs: Iterable[tuple[FrameRef, Array | npt.NDArray[np.bool_]]],
    skipped: tuple[str, ...],
    keep_probabilities: bool,
    as_label_map: bool = False,
) -> Segmentation:
    """Decide source-grid probabilities, frame by frame, into masks or a label map.

    Softmax labels are exclusive (arg-max with the background), sigmoid labels each
    decided at their threshold. Exclusive labels can be kept as one label map
    (``as_label_map``: the 3D path, one byte per voxel for any number of labels)
    instead of one mask per label.

    Parameters
    ----------
    spec, identity : ModelSpec, ModelIdentity
        The model's description and the identity written into results.
    series_uid : str
        The source series.
    stack : Stack
        The stack that ran (for its matrix and spacing).
    source_probs : iterable of (FrameRef, numpy.ndarray)
        Each frame that ran, in slice order, with its float32 (rows, columns,
        labels) probabilities on the source grid (or, for sigmoid labels, the
        masks decided from them: see `slice_probabilities`); consumed as it comes (a 2D model
        still running), and fewer than the stack's frames when some did not
        decode, in which case slice spacing is not given.
    skipped : tuple of str
        Reasons for parts of the series left out.
    keep_probabilities : bool
        Carry the probabilities in the result (for fractional SEG).
    as_label_map : bool
        Keep softmax results as a label map (ignored for sigmoid labels).

    Returns
    -------
    Segmentation
    """
    labels = len(spec.labels)
    shape = (len(stack.frames), *stack.shape)  # trimmed below when frames failed
    exclusive = spec.output.activation is Activation.SOFTMAX
    dtype = label_map_dtype(labels)
    label_map = np.empty(shape, dtype=dtype) if exclusive and as_label_map else None
    masks = None if label_map is not None else np.empty((*shape, labels), dtype=np.bool_)
    numbers = np.arange(1, labels + 1, dtype=dtype)
    kept = np.empty((*shape, labels), dtype=np.float32) if keep_probabilities else None
    frames: list[FrameRef] = []
    for index, (frame, values) in enumerate(source_probs):
        frames.append(frame)
        if kept is not None:  # never decided early: these are probabilities
            kept[index] = values
        if masks is not None and not exclusive:
            masks[index] = _masks(spec, values)
            continue
        probs = np.asarray(values, dtype=np.float32)  # softmax: never decided early
        if label_map is not None:
            label_map[index] = _winners(probs, dtype)
        elif masks is not None:
            masks[index] = _winners(probs, dtype)[..., np.newaxis] == numbers
    complete = len(frames) == len(stack.frames)
    if not complete:  # leading slices of C-contiguous arrays: views, still contiguous
        ran = len(frames)
        label_map = label_map[:ran] if label_map is not None else None
        masks = masks[:ran] if masks is not None else None
        kept = kept[:ran] if kept is not None else None
    return Segmentation(
        model=identity,
        series_instance_uid=series_uid,
        frames=tuple(frames),
        labels=spec.labels,
        masks=masks,
        label_map=label_map,
        pixel_spacing_mm=stack.pixel_spacing_mm,
        slice_spacing_mm=stack.slice_spacing_mm if complete and stack.regular else None,
        probabilities=kept,
        skipped=skipped,
    )


def slice_probabilities(
    spec: ModelSpec, raw: Array, fits: Sequence[Fit], keep_probabilities: bool = False
) -> Iterator[Array | npt.NDArray[np.bool_]]:
    """2D outputs (N, channels, h, w) to source probabilities (rows, cols, labels) per frame.

    Sigmoid labels on frames the model saw at their own size (nothing to resample)
    come back decided, as boolean masks (`sigmoid_at_least`: the same masks
    without computing most of the sigmoid), unless the probabilities are to be kept.
    """
    identity = all(fit.source == fit.model == fit.content for fit in fits)
    if spec.output.activation is Activation.SIGMOID and identity and not keep_probabilities:
        thresholds = [label.threshold for label in spec.labels]
        for masks in sigmoid_at_least(raw, thresholds, axis=1):
            yield np.moveaxis(masks, 0, -1)
        return
    for probs, fit in zip(probabilities(raw, spec.output.activation, axis=1), fits, strict=True):
        yield np.moveaxis(to_source(probs, fit, first_axis=1), 0, -1)


def volume_probabilities(spec: ModelSpec, raw: Array, fit: Fit) -> Iterator[Array]:
    """A 3D output (1, channels, d, h, w) to source-grid probabilities, slice by slice."""
    probs = probabilities(raw, spec.output.activation, axis=1)[0]  # (labels, d, h, w)
    # Slices are resampled at model resolution; each slice then goes to source size.
    content = resize_axis(crop_content(probs, fit, first_axis=1), 1, fit.source[0])
    for index in range(fit.source[0]):
        plane = resize(content[:, index], fit.source[1:], first_axis=1)
        yield np.moveaxis(plane, 0, -1)
