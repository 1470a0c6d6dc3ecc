"""A chain step's input restricted to a segment an earlier step found (``input_mask``).

The mask is the earlier step's SEG as written to its outbox (the object the archive
got), read back with highdicom per source instance, so the later model sees exactly
what the radiologist sees. Restriction keeps the geometry: every source instance stays
(same SOP Instance UID, position and size) and its pixels outside the segment are set
to the series' lowest stored value (air for CT, background for MR), so the later
model's output, and the results built from it, lie on the source slices with no
mapping back. Cropping to the segment's bounding box would save compute but needs
models that accept any size; masking works for every package.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import DataElement, Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig
from dicom_node.db.schema import Job
from dicom_node.errors import DicomNodeError
from dicom_node.work.chain import chain_comments
from dicom_node.work.jobs import ClaimedJob

PIXEL_DATA = Tag("PixelData")
FRACTION_INSIDE = 0.5
"""A fractional SEG's pixel is inside the segment from this probability on."""


class StepInputError(DicomNodeError):
    """The segment a step's input is to be restricted to cannot be read or applied."""


def _segmentation_of(paths: Sequence[Path], series_uid: str) -> Path:
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.SOPClassUID != SegmentationStorage:
            continue
        referenced = {item.SeriesInstanceUID for item in header.ReferencedSeriesSequence}
        if series_uid in referenced:
            return path
    raise StepInputError(f"no SEG of series {series_uid} among the earlier step's results")


def segment_mask(
    result_paths: Sequence[Path], series_uid: str, label: str, sop_uids: Sequence[str]
) -> npt.NDArray[np.bool_]:
    """The segment ``label`` of the earlier step's SEG of ``series_uid``, one boolean
    frame per source instance in ``sop_uids`` (all False where it has no frame).

    Raises
    ------
    StepInputError
        When there is no SEG of the series, or no segment ``label`` in it.
    OSError
        When a result file cannot be read (removed by retention).
    """
    path = _segmentation_of(result_paths, series_uid)
    segmentation = hd.seg.segread(path)
    numbers = segmentation.get_segment_numbers(segment_label=label)
    if not numbers:
        raise StepInputError(f"SEG {path.name} has no segment {label!r}")
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(sop_uids),
        segment_numbers=numbers[:1],
        assert_missing_frames_are_empty=True,
    )
    return np.asarray(pixels[..., 0] >= FRACTION_INSIDE)


def restrict_to_mask(datasets: Sequence[Dataset], mask: npt.NDArray[np.bool_]) -> list[Dataset]:
    """Copies of single-frame grayscale ``datasets`` whose pixels outside ``mask`` (one
    frame per dataset) hold the series' lowest stored value; the originals are untouched.

    Raises
    ------
    StepInputError
        When a dataset is multi-frame or in colour, or its size differs from its mask
        frame.
    """
    pixels = []
    for dataset, frame in zip(datasets, mask, strict=True):
        if int(dataset.get("NumberOfFrames", 1)) > 1 or int(dataset.SamplesPerPixel) != 1:
            raise StepInputError(
                f"instance {dataset.SOPInstanceUID}: a mask restricts single-frame "
                "grayscale instances only"
            )
        array = dataset.pixel_array
        if array.shape != frame.shape:
            raise StepInputError(
                f"instance {dataset.SOPInstanceUID}: pixels {array.shape} differ from its "
                f"mask frame {frame.shape}"
            )
        pixels.append(array)
    background = min(int(array.min()) for array in pixels)
    return [
        _with_pixels(dataset, np.where(frame, array, background).astype(array.dtype))
        for dataset, array, frame in zip(datasets, pixels, mask, strict=True)
    ]


def _with_pixels(dataset: Dataset, array: npt.NDArray[Any]) -> Dataset:
    """A copy of ``dataset`` holding ``array`` (its own decoded shape and type) as
    uncompressed Pixel Data. Unchanged elements are shared, not copied: a deep copy of
    a 300-slice series costs more than the model reading it."""
    copied = Dataset({tag: element for tag, element in dataset.items() if tag != PIXEL_DATA})
    meta = FileMetaDataset(copy.deepcopy(getattr(dataset, "file_meta", FileMetaDataset())))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copied.file_meta = meta
    vr = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
    copied[PIXEL_DATA] = DataElement(
        PIXEL_DATA, vr, array.astype(array.dtype.newbyteorder("<")).tobytes()
    )
    return copied


@dataclass(frozen=True)
class StepInput:
    """How a later chain step's job runs: its SR comments, and the earlier step's
    segment its input is restricted to (``mask_label`` in ``result_paths``), if any."""

    comments: list[str]
    mask_label: str | None = None
    result_paths: tuple[Path, ...] = ()

    def model_input(self, series_uid: str, datasets: Sequence[Dataset]) -> list[Dataset]:
        """The datasets the model reads: restricted to the mask, or as they are.

        Raises
        ------
        StepInputError
            When the mask cannot be read or applied.
        """
        if self.mask_label is None:
            return list(datasets)
        sop_uids = [str(dataset.SOPInstanceUID) for dataset in datasets]
        mask = segment_mask(self.result_paths, series_uid, self.mask_label, sop_uids)
        return restrict_to_mask(datasets, mask)


def step_input(session: Session, config: NodeConfig, job: ClaimedJob) -> StepInput:
    """The `StepInput` of a job: empty for jobs that are no later step of a chain.

    Raises
    ------
    StepInputError
        When the job is a later step that the config no longer has, or whose earlier
        step's job is gone: running it unrestricted would be another computation.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if not job.step:
        return StepInput([])
    route = next((r for r in config.routes if r.name == job.route_name), None)
    step = None if route is None else route.step_named(job.step)
    upstream = session.get(Job, job.upstream_job_id) if job.upstream_job_id else None
    if route is None or step is None:
        raise StepInputError(f"route {job.route_name!r} has no step {job.step!r} any more")
    if upstream is None:
        raise StepInputError(f"the job of the step before {job.step!r} is gone")
    mask = step.mask()
    return StepInput(
        chain_comments(route, step, upstream.model_name),
        None if mask is None else mask[1],
        tuple(Path(name) for name in upstream.findings.get("files", [])),
    )
