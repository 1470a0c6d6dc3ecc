"""Which parts of a series a model takes, and why the rest is left out.

The plan is made from headers alone: instances of another modality, SOP class or
body part are dropped with a reason, frames are split into stacks, and each stack is
checked against what the model needs (a 3D model needs a regular stack with slice
positions and enough slices). A segmentation covers one stack, the largest the model
takes; classification and detection cover every stack they can.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pydicom import Dataset

from inference.errors import UnsupportedSeriesError
from inference.preprocessing.stacks import Stack, list_frames, split_stacks
from inference.spec import ModelSpec, Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesPlan:
    """The stacks to run, in order, and one reason per part left out."""

    series_instance_uid: str
    stacks: tuple[Stack, ...]
    skipped: tuple[str, ...]


def _instance_reason(ds: Dataset, spec: ModelSpec) -> str | None:
    uid = str(ds.get("SOPInstanceUID", "?"))
    wanted = spec.input
    modality = str(ds.get("Modality", "")).upper()
    if modality not in {m.upper() for m in wanted.modalities}:
        return f"instance {uid}: Modality {modality or '(none)'!r} not in {list(wanted.modalities)}"
    if wanted.sop_classes and str(ds.get("SOPClassUID", "")) not in wanted.sop_classes:
        return f"instance {uid}: SOP Class {ds.get('SOPClassUID', '(none)')} not accepted"
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if wanted.body_parts and body_part not in {b.upper() for b in wanted.body_parts}:
        shown = body_part or "(none)"
        return f"instance {uid}: BodyPartExamined {shown!r} not in {list(wanted.body_parts)}"
    return None


def _stack_reason(stack: Stack, spec: ModelSpec) -> str | None:
    if spec.input.dimensions == 2:
        return None
    if len(stack.frames) < spec.input.min_slices:
        return f"stack ({stack.description}): fewer than {spec.input.min_slices} slices"
    if stack.slice_spacing_mm is None or len(stack.frames) < 2:
        return (
            f"stack ({stack.description}): a 3D model needs slice positions and two or more slices"
        )
    if not stack.regular and spec.input.window is None:
        # A windowed package's volume geometry judges the steps (and may resample).
        return f"stack ({stack.description}): slice spacing not regular (gaps or repeats)"
    return None


def plan_series(datasets: Sequence[Dataset], spec: ModelSpec) -> SeriesPlan:
    """Decide which stacks of a series the model runs on.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        The instances of one series, in any order.
    spec : ModelSpec
        The model's package description.

    Returns
    -------
    SeriesPlan
        The stacks to run and the reasons for everything left out.

    Raises
    ------
    UnsupportedSeriesError
        When nothing in the series is left to run; the reason lists why.
    """
    series_uid = str(datasets[0].get("SeriesInstanceUID", "")) if datasets else ""
    if not datasets:
        raise UnsupportedSeriesError("the series holds no instances")
    skipped: list[str] = []
    accepted: list[Dataset] = []
    original_index: list[int] = []  # of each accepted dataset in the caller's sequence
    for index, ds in enumerate(datasets):
        reason = _instance_reason(ds, spec)
        if reason is None:
            accepted.append(ds)
            original_index.append(index)
        else:
            skipped.append(reason)
    frames, frame_skips = list_frames(accepted)
    skipped += frame_skips
    geometry = spec.input.volume_geometry
    deviation = geometry.max_slice_step_deviation if geometry else spec.input.max_spacing_deviation
    stacks, stack_skips = split_stacks(frames, deviation)
    skipped += stack_skips
    runnable: list[Stack] = []
    for stack in stacks:
        reason = _stack_reason(stack, spec)
        if reason is None:
            runnable.append(stack)
        else:
            skipped.append(reason)
    if spec.model.task is Task.SEGMENTATION and len(runnable) > 1:
        skipped += [
            f"stack ({s.description}): a segmentation covers one stack" for s in runnable[1:]
        ]
        runnable = runnable[:1]
    if not runnable:
        raise UnsupportedSeriesError("; ".join(skipped) or "no frames", series_uid)
    # Frames index the caller's datasets, not the accepted subset.
    remapped = tuple(_reindex(stack, original_index) for stack in runnable)
    for reason in skipped:
        logger.info("series %s: skipped %s", series_uid, reason)
    return SeriesPlan(series_uid, remapped, tuple(skipped))


def _reindex(stack: Stack, original_index: Sequence[int]) -> Stack:
    frames = tuple(replace(f, dataset_index=original_index[f.dataset_index]) for f in stack.frames)
    return replace(stack, frames=frames)
