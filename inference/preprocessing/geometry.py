"""Where each frame lies in the patient: position, orientation, spacing, thickness.

The one reading of frame geometry in the project: `inference` groups, sorts and
resamples by it, and `sr_writer` (through `inference`'s exports) writes its
references, planes and measurements from it. Single-frame images carry Image
Position/Orientation (Patient) and Pixel Spacing at the top level; enhanced
multi-frame images carry them per frame or shared in the functional groups (per
frame first). Values that are missing, malformed, not finite or (for spacings)
not positive give ``None``, so that the caller decides what a frame without
geometry may still do.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameGeometry:
    """The plane of one frame; any part may be unknown (``None``)."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    """(row, column) Pixel Spacing in the patient plane."""
    imager_pixel_spacing: tuple[float, float] | None = None
    """(row, column) Imager Pixel Spacing at the detector (projection radiographs)."""
    thickness: float | None = None
    """Slice Thickness in mm."""

    @property
    def measuring_spacing(self) -> tuple[float, float] | None:
        """The spacing areas are measured with: Pixel Spacing, else the imager's."""
        return self.pixel_spacing or self.imager_pixel_spacing

    @property
    def normal(self) -> npt.NDArray[np.float64] | None:
        """Unit normal of the plane (row direction x column direction), or ``None``."""
        return None if self.orientation is None else _unit_normal(self.orientation)


@functools.lru_cache(maxsize=256)
def _unit_normal(orientation: tuple[float, ...]) -> npt.NDArray[np.float64] | None:
    """The unit normal of one Image Orientation (Patient), computed once: a series
    shares one orientation, and sorting and stacking ask for it per frame."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    length = float(np.linalg.norm(normal))
    if length <= 1e-6:
        return None
    unit = normal / length
    unit.flags.writeable = False  # shared by every frame with this orientation
    return unit


def functional_item(ds: Dataset, frame_index: int, sequence: str) -> Dataset | None:
    """Return the first item of a functional group macro for one frame.

    Looks in the Per-Frame Functional Groups first, then in the Shared ones, as the
    standard lets either hold a macro.
    """
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame_index),
                          ("SharedFunctionalGroupsSequence", 0)):  # fmt: skip
        items = ds.get(groups)
        if items is None or len(items) <= index:
            continue
        macro = items[index].get(sequence)
        if macro:
            item: Dataset = macro[0]
            return item
    return None


def _floats(value: Any, count: int, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values: Sequence[Any] = (
        value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    )
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        logger.debug("ignoring malformed %s %r", what, value)
        return None
    if len(numbers) != count or not all(map(math.isfinite, numbers)):
        logger.debug(
            "ignoring %s with %d values, expected %d: %r", what, len(numbers), count, value
        )
        return None
    return numbers


def frame_geometry(ds: Dataset, frame_index: int) -> FrameGeometry:
    """Return the geometry of one frame of a dataset.

    Parameters
    ----------
    ds : pydicom.Dataset
        A single- or multi-frame image.
    frame_index : int
        0-based frame number.

    Returns
    -------
    FrameGeometry
        Position, orientation and spacing, each ``None`` where the dataset does not
        give a usable value.
    """
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    spacing = ds.get("PixelSpacing")
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        plane = functional_item(ds, frame_index, "PlanePositionSequence")
        if plane is not None:
            position = plane.get("ImagePositionPatient")
        orient = functional_item(ds, frame_index, "PlaneOrientationSequence")
        if orient is not None:
            orientation = orient.get("ImageOrientationPatient")
        measures = functional_item(ds, frame_index, "PixelMeasuresSequence")
        if measures is not None:
            spacing = measures.get("PixelSpacing")
    pos = _floats(position, 3, "ImagePositionPatient")
    ori = _floats(orientation, 6, "ImageOrientationPatient")
    return FrameGeometry(
        position=pos,  # type: ignore[arg-type]
        orientation=ori,  # type: ignore[arg-type]
        pixel_spacing=_spacing(spacing, "PixelSpacing"),
        imager_pixel_spacing=_spacing(ds.get("ImagerPixelSpacing"), "ImagerPixelSpacing"),
        thickness=slice_thickness(ds, frame_index),
    )


def _spacing(value: Any, what: str) -> tuple[float, float] | None:
    numbers = _floats(value, 2, what)
    # Some writers put 0\0 for "unknown"; it must reach neither a model nor a result.
    return None if numbers is None or min(numbers) <= 0 else (numbers[0], numbers[1])


def slice_thickness(ds: Dataset, frame_index: int) -> float | None:
    """Slice Thickness of a frame in mm (functional groups first), or ``None``."""
    measures = functional_item(ds, frame_index, "PixelMeasuresSequence")
    value = (measures or ds).get("SliceThickness", ds.get("SliceThickness"))
    thickness = _floats(value, 1, "SliceThickness")
    return thickness[0] if thickness and thickness[0] > 0 else None
