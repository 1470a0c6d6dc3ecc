"""Decoding and preparing frames in a thread pool, ahead of the model.

Instances are decoded in the pool in the order the model needs them, so that while
the accelerator runs one batch the next ones are being decoded (JPEG 2000 decoding
is the slow part of a CT series). Each frame becomes a model input (channels first,
in the model's grid) together with the `Fit` that maps results back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from inference.preprocessing.intensity import normalize, voi_window
from inference.preprocessing.pixels import DecodeError, decode, to_channels
from inference.preprocessing.resize import Fit, plan_fit, to_model
from inference.preprocessing.stacks import SourceFrame, Stack
from inference.spec import ModelSpec

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
DEFAULT_LOOKAHEAD = 32  # instances decoded ahead of the model
T = TypeVar("T")


@dataclass(frozen=True)
class PreparedFrame:
    """One model input (channels, rows, columns) and the way back to its source frame."""

    frame: SourceFrame
    input: Array
    fit: Fit


@dataclass(frozen=True)
class FrameFailure:
    """A frame whose instance did not decode; the series goes on without it."""

    frame: SourceFrame
    reason: str


def _physical_frames(ds: Dataset, spec: ModelSpec) -> tuple[Array, bool]:
    decoded = decode(ds)
    if decoded.pixels.shape[-1] == spec.input.channels:
        return decoded.pixels, decoded.monochrome1  # decoded once, not copied again
    channels = np.stack([to_channels(f, spec.input.channels) for f in decoded.pixels])
    return channels, decoded.monochrome1


def _prepare_instance(
    ds: Dataset, frames: Sequence[SourceFrame], spec: ModelSpec
) -> list[PreparedFrame | FrameFailure]:
    """Decode one instance and prepare the frames of it that the stack uses."""
    try:
        pixels, monochrome1 = _physical_frames(ds, spec)
    except (DecodeError, ValueError) as exc:
        return [FrameFailure(f, f"instance {f.ref.sop_instance_uid}: {exc}") for f in frames]
    prepared: list[PreparedFrame | FrameFailure] = []
    for frame in frames:
        values = normalize(
            pixels[frame.frame_index],
            spec.input.intensity,
            monochrome1=monochrome1,
            dataset_window=voi_window(ds, frame.frame_index),
        )
        fit = plan_fit((frame.rows, frame.columns), spec.input.size, spec.input.resize)
        model_input = np.ascontiguousarray(np.moveaxis(to_model(values, fit), -1, 0))
        prepared.append(PreparedFrame(frame, model_input, fit))
    return prepared


def iter_prepared(
    datasets: Sequence[Dataset],
    stacks: Sequence[Stack],
    spec: ModelSpec,
    pool: Executor,
    lookahead: int = DEFAULT_LOOKAHEAD,
) -> Iterator[PreparedFrame | FrameFailure]:
    """Yield every frame of the stacks, in stack order, prepared for a 2D model.

    Instances are submitted to the pool in the order of first use, up to
    ``lookahead`` instances ahead of the consumer: decoding runs ahead of the model,
    and memory stays bounded however long the series.
    """
    frames_of: dict[int, list[SourceFrame]] = {}
    for stack in stacks:
        for frame in stack.frames:
            frames_of.setdefault(frame.dataset_index, []).append(frame)
    order = list(frames_of)
    position = {index: i for i, index in enumerate(order)}
    futures: dict[int, Future[list[PreparedFrame | FrameFailure]]] = {}
    submitted = 0

    def submit_until(limit: int) -> None:
        nonlocal submitted
        while submitted < min(limit, len(order)):
            index = order[submitted]
            futures[index] = pool.submit(_prepare_instance, datasets[index], frames_of[index], spec)
            submitted += 1

    results: dict[tuple[int, int], PreparedFrame | FrameFailure] = {}
    for stack in stacks:
        for frame in stack.frames:
            key = (frame.dataset_index, frame.frame_index)
            if key not in results:
                submit_until(position[frame.dataset_index] + 1 + lookahead)
                for item in futures.pop(frame.dataset_index).result():
                    results[(item.frame.dataset_index, item.frame.frame_index)] = item
            yield results.pop(key)


def decode_stack(
    datasets: Sequence[Dataset], stack: Stack, spec: ModelSpec, pool: Executor
) -> tuple[Array, bool]:
    """Decode a whole stack into one float32 array (slices, rows, columns, channels).

    Instances are decoded in the pool and copied into one preallocated array, so
    that the peak is the volume plus the instances in flight, not two volumes.

    Returns
    -------
    volume : numpy.ndarray
        Physical values (after the Modality LUT), in stack order.
    monochrome1 : bool
        Whether the stack's first instance is MONOCHROME1.

    Raises
    ------
    DecodeError
        When any instance of the stack does not decode: a volume with a hole is
        not a volume.
    """
    first = stack.frames[0]
    volume = np.empty(
        (len(stack.frames), first.rows, first.columns, spec.input.channels), dtype=np.float32
    )
    slots: dict[int, list[tuple[int, int]]] = {}
    for position, frame in enumerate(stack.frames):
        slots.setdefault(frame.dataset_index, []).append((position, frame.frame_index))
    monochrome1 = False
    for index, (pixels, inverted) in zip(
        slots, pool.map(lambda i: _physical_frames(datasets[i], spec), slots), strict=True
    ):
        for position, frame_index in slots[index]:
            volume[position] = pixels[frame_index]
        if index == first.dataset_index:
            monochrome1 = inverted
    return volume, monochrome1


def prepare_volume(
    datasets: Sequence[Dataset], stack: Stack, spec: ModelSpec, pool: Executor
) -> tuple[Array, Fit]:
    """Decode a whole stack and prepare it as one 3D input (channels, slices, rows, cols).

    Intensity statistics (z-score, min-max, percentile) are taken over the volume.

    Raises
    ------
    DecodeError
        When any instance of the stack does not decode.
    """
    volume, monochrome1 = decode_stack(datasets, stack, spec, pool)
    first = stack.frames[0]
    values = normalize(
        volume,
        spec.input.intensity,
        monochrome1=monochrome1,
        dataset_window=voi_window(datasets[first.dataset_index], first.frame_index),
    )
    fit = plan_fit(
        (len(stack.frames), first.rows, first.columns), spec.input.size, spec.input.resize
    )
    return np.ascontiguousarray(np.moveaxis(to_model(values, fit), -1, 0)), fit


def chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    """Consecutive items in lists of at most ``size`` (one model batch each)."""
    pending: list[T] = []
    for item in items:
        pending.append(item)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending


def batches(inputs: Iterator[Array], max_batch: int) -> Iterator[Array]:
    """Group single inputs into float32 batches of at most ``max_batch``."""
    for group in chunks(inputs, max_batch):
        yield np.stack(group)
