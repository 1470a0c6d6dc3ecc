"""A series split into stacks of frames that a model can take as one consistent set.

A DICOM series is not a volume: it may mix localizers with axial slices, repeat
positions across acquisitions (multiphase CT, repeated scans), or hold several
orientations. Frames are grouped by matrix size, orientation and pixel spacing, then
split by acquisition where positions repeat, and sorted along the slice normal
(never by InstanceNumber). Each stack knows its slice spacing and whether that
spacing is regular, so that 3D models get only true volumes.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from inference.prediction import FrameRef
from inference.preprocessing.geometry import FrameGeometry, frame_geometry

logger = logging.getLogger(__name__)

_ORIENTATION_DECIMALS = 3  # cosines equal to 1e-3 are one orientation
_POSITION_TOLERANCE_MM = 0.01  # positions closer than this along the normal coincide


@dataclass(frozen=True)
class SourceFrame:
    """One frame of one source instance, with what is needed to group and sort it."""

    dataset_index: int
    frame_index: int
    ref: FrameRef
    rows: int
    columns: int
    geometry: FrameGeometry
    acquisition: str
    is_localizer: bool


@dataclass(frozen=True)
class Stack:
    """Frames of one consistent plane set, in slice order where positions exist.

    ``slice_spacing_mm`` is the median step along the normal; ``regular`` says whether
    every step is within the allowed deviation of it, with no repeated position.
    """

    frames: tuple[SourceFrame, ...]
    slice_spacing_mm: float | None
    regular: bool
    description: str

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every frame in the stack."""
        return self.frames[0].rows, self.frames[0].columns

    @property
    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing shared by the stack's frames, or ``None``."""
        return self.frames[0].geometry.measuring_spacing


def list_frames(datasets: Sequence[Dataset]) -> tuple[list[SourceFrame], list[str]]:
    """List the frames of a series from the headers alone, without decoding pixels.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        The instances of one series.

    Returns
    -------
    frames : list of SourceFrame
        One entry per frame of every instance that has pixel data.
    skipped : list of str
        One reason per instance left out (no pixel data, no SOP Instance UID).
    """
    frames: list[SourceFrame] = []
    skipped: list[str] = []
    for index, ds in enumerate(datasets):
        uid = str(ds.get("SOPInstanceUID", ""))
        if not uid:
            skipped.append(f"instance #{index}: no SOPInstanceUID")
            continue
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            skipped.append(f"instance {uid}: no pixel data")
            continue
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        if rows < 1 or columns < 1:
            skipped.append(f"instance {uid}: Rows/Columns {rows}x{columns} invalid")
            continue
        image_type = [str(v).strip().upper() for v in ds.get("ImageType", [])]
        n_frames = frame_count(ds)
        if n_frames < 1:
            skipped.append(f"instance {uid}: NumberOfFrames {ds.get('NumberOfFrames')!r} invalid")
            continue
        for frame_index in range(n_frames):
            frames.append(
                SourceFrame(
                    dataset_index=index,
                    frame_index=frame_index,
                    ref=FrameRef(uid, frame_index + 1),
                    rows=rows,
                    columns=columns,
                    geometry=frame_geometry(ds, frame_index),
                    acquisition=str(ds.get("AcquisitionNumber", "") or ""),
                    is_localizer="LOCALIZER" in image_type,
                )
            )
    return frames, skipped


def frame_count(ds: Dataset) -> int:
    """Number of Frames (1 when absent), or 0 when the value is not a positive integer."""
    value = ds.get("NumberOfFrames", 1)
    try:
        count = int(str(value).strip() or 1)
    except ValueError:
        return 0
    return max(count, 0)


def _group_key(frame: SourceFrame) -> tuple[object, ...]:
    geometry = frame.geometry
    orientation = (
        None
        if geometry.orientation is None
        else tuple(round(v, _ORIENTATION_DECIMALS) + 0.0 for v in geometry.orientation)
    )
    spacing = (
        None
        if geometry.measuring_spacing is None
        else tuple(round(v, 4) for v in geometry.measuring_spacing)
    )
    return frame.rows, frame.columns, orientation, spacing


def _distance(frame: SourceFrame) -> float | None:
    normal = frame.geometry.normal
    if normal is None or frame.geometry.position is None:
        return None
    return float(np.dot(normal, frame.geometry.position))


def _has_repeats(frames: Sequence[SourceFrame]) -> bool:
    distances = sorted(d for f in frames if (d := _distance(f)) is not None)
    return any(b - a < _POSITION_TOLERANCE_MM for a, b in itertools.pairwise(distances))


def _split_repeats(frames: list[SourceFrame]) -> list[list[SourceFrame]]:
    """Split a group whose positions repeat: by acquisition, then by repeat order."""
    if not _has_repeats(frames):
        return [frames]
    by_acquisition: dict[str, list[SourceFrame]] = defaultdict(list)
    for frame in frames:
        by_acquisition[frame.acquisition].append(frame)
    parts: list[list[SourceFrame]] = []
    for members in by_acquisition.values():
        if not _has_repeats(members):
            parts.append(members)
            continue
        # Same acquisition, same position twice: the k-th occurrence joins stack k.
        seen: dict[float, int] = defaultdict(int)
        layers: list[list[SourceFrame]] = []
        for frame in members:
            distance = _distance(frame)
            key = round(distance / _POSITION_TOLERANCE_MM) if distance is not None else 0.0
            layer = seen[key]
            seen[key] += 1
            if layer == len(layers):
                layers.append([])
            layers[layer].append(frame)
        parts.extend(layers)
    return parts


def _make_stack(frames: list[SourceFrame], max_deviation: float) -> Stack:
    distances = [_distance(f) for f in frames]
    first = frames[0]
    orientation = first.geometry.orientation
    where = (
        f"{len(frames)} frame(s) of {first.rows}x{first.columns}"
        + (f", orientation {[round(v, 3) for v in orientation]}" if orientation else "")
        + (f", acquisition {first.acquisition}" if first.acquisition else "")
    )
    if any(d is None for d in distances):
        # No geometry: keep the order the frames came in (instance, then frame).
        return Stack(tuple(frames), None, len(frames) == 1, where + ", no slice positions")
    order = np.argsort(np.asarray(distances, dtype=np.float64), kind="stable")
    ordered = tuple(frames[i] for i in order)
    if len(ordered) == 1:  # one slice: its thickness is the best spacing there is
        return Stack(ordered, first.geometry.thickness, True, where)
    steps = np.diff(np.sort(np.asarray(distances, dtype=np.float64)))
    spacing = float(np.median(steps))
    regular = bool(
        spacing > _POSITION_TOLERANCE_MM
        and np.all(np.abs(steps - spacing) <= max_deviation * spacing)
    )
    return Stack(ordered, spacing if spacing > _POSITION_TOLERANCE_MM else None, regular, where)


def split_stacks(
    frames: Sequence[SourceFrame], max_spacing_deviation: float = 0.1
) -> tuple[list[Stack], list[str]]:
    """Split a series' frames into consistent stacks, largest first.

    Parameters
    ----------
    frames : sequence of SourceFrame
        All frames of a series (from `list_frames`).
    max_spacing_deviation : float
        Relative deviation of a slice step from the median step still called regular.

    Returns
    -------
    stacks : list of Stack
        Frames grouped by matrix, orientation and spacing, split by acquisition where
        positions repeat, each sorted along its normal; the largest first.
    skipped : list of str
        Reasons for frames left out (localizer images).
    """
    skipped: list[str] = []
    groups: dict[tuple[object, ...], list[SourceFrame]] = defaultdict(list)
    for frame in frames:
        if frame.is_localizer:
            skipped.append(
                f"frame {frame.ref.sop_instance_uid}#{frame.ref.frame_number}: localizer"
            )
            continue
        groups[_group_key(frame)].append(frame)
    stacks = [
        _make_stack(part, max_spacing_deviation)
        for members in groups.values()
        for part in _split_repeats(members)
    ]
    stacks.sort(key=lambda s: len(s.frames), reverse=True)
    logger.debug("series split into %d stack(s): %s", len(stacks), [s.description for s in stacks])
    return stacks, skipped
