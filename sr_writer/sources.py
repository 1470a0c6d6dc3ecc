"""The source series a prediction was made on: lookup of frames and their geometry.

Predictions name source frames by SOP Instance UID and 1-based frame number; this
module finds them among the datasets the node loaded and gives what result objects
need from them (references, pixels, Frame of Reference), for single-frame series
and enhanced multi-frame instances alike. Frame geometry is `inference`'s
(`inference.frame_geometry`): one reading of position, orientation and spacing
for the model and its results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from highdicom.sr import SourceImageForMeasurement, SourceImageForRegion
from pydicom import Dataset
from pydicom.pixels import apply_color_lut, apply_rescale, pixel_array

from inference import FrameGeometry, FrameRef, frame_geometry
from sr_writer.errors import SourceMismatchError, UnsupportedSourceError


@dataclass(frozen=True)
class ImageFrame:
    """One frame of one source instance, as result objects reference and measure it."""

    dataset: Dataset
    frame_number: int

    @property
    def is_multi_frame(self) -> bool:
        """Whether the instance holds several frames (references then name the frame).

        An instance of a multi-frame class holding one frame counts as single-frame.
        """
        return int(self.dataset.get("NumberOfFrames", 1) or 1) > 1

    @property
    def sop_instance_uid(self) -> str:
        """The instance's SOP Instance UID."""
        return str(self.dataset.SOPInstanceUID)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the frame."""
        return int(self.dataset.Rows), int(self.dataset.Columns)

    @cached_property
    def geometry(self) -> FrameGeometry:
        """Position, orientation, spacings and thickness, read as `inference` reads them."""
        return frame_geometry(self.dataset, self.frame_number - 1)

    def region_source(self) -> SourceImageForRegion:
        """The SR reference for a region drawn on this frame."""
        return SourceImageForRegion(
            referenced_sop_class_uid=self.dataset.SOPClassUID,
            referenced_sop_instance_uid=self.sop_instance_uid,
            referenced_frame_numbers=[self.frame_number] if self.is_multi_frame else None,
        )

    def measurement_source(self) -> SourceImageForMeasurement:
        """The SR reference for a measurement made on this frame."""
        return SourceImageForMeasurement(
            referenced_sop_class_uid=self.dataset.SOPClassUID,
            referenced_sop_instance_uid=self.sop_instance_uid,
            referenced_frame_numbers=[self.frame_number] if self.is_multi_frame else None,
        )

    def pixels(self) -> npt.NDArray[np.float64]:
        """The frame's values after the modality rescale (or palette), as float64.

        Raises
        ------
        UnsupportedSourceError
            If the pixel data cannot be decoded (missing, or no decoder installed):
            an image fused over the source cannot be made, the rest can.
        """
        try:
            index = self.frame_number - 1 if self.is_multi_frame else None
            stored = pixel_array(self.dataset, index=index)
        except (AttributeError, ValueError, RuntimeError, NotImplementedError) as exc:
            raise UnsupportedSourceError(
                "heatmap overlay",
                f"cannot decode pixels of {self.sop_instance_uid} #{self.frame_number}: {exc}",
            ) from exc
        if self.dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
            return np.asarray(apply_color_lut(stored, self.dataset), dtype=np.float64)
        return np.asarray(apply_rescale(stored, self.dataset), dtype=np.float64)


class SourceSeries:
    """The datasets a prediction was made on, indexed by SOP Instance UID.

    Parameters
    ----------
    datasets: Sequence[pydicom.Dataset]
        The source instances, all of one study.
    series_instance_uid: str | None
        The series the prediction was made on (``Prediction.series_instance_uid``);
        ``None`` or empty takes the first dataset's. Result UIDs derive from it.

    Raises
    ------
    ValueError
        If ``datasets`` is empty, or the datasets belong to different studies or
        repeat a SOP Instance UID.
    """

    def __init__(self, datasets: Sequence[Dataset], series_instance_uid: str | None = None) -> None:
        if not datasets:
            raise ValueError("source_datasets must hold at least one dataset")
        studies = {str(ds.StudyInstanceUID) for ds in datasets}
        if len(studies) != 1:
            raise ValueError(f"source datasets span several studies: {sorted(studies)}")
        self._by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        if len(self._by_uid) != len(datasets):
            raise ValueError("source datasets repeat a SOP Instance UID")
        self.datasets = list(datasets)
        self.study_instance_uid = studies.pop()
        self.series_instance_uid = series_instance_uid or str(
            datasets[0].get("SeriesInstanceUID", "")
        )
        """The source series: with the study, what every result UID derives from."""
        self.reference = with_type2_attributes(self.datasets[0])
        """The dataset whose patient and study modules the results copy."""
        self._frames: dict[tuple[str, int], ImageFrame] = {}
        """Frames looked up so far: each reads its geometry once, whoever asks."""

    def frame(self, ref: FrameRef) -> ImageFrame:
        """Return the source frame a prediction names (the same object every time).

        Raises
        ------
        SourceMismatchError
            If the instance is not among the sources or has no such frame.
        """
        dataset = self._by_uid.get(ref.sop_instance_uid)
        if dataset is None:
            raise SourceMismatchError(
                ref.sop_instance_uid, ref.frame_number, "not among the source datasets"
            )
        key = (ref.sop_instance_uid, ref.frame_number)
        known = self._frames.get(key)
        if known is not None:
            return known
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if not 1 <= ref.frame_number <= frames:
            raise SourceMismatchError(
                ref.sop_instance_uid, ref.frame_number, f"the instance has {frames} frame(s)"
            )
        frame = self._frames[key] = ImageFrame(dataset, ref.frame_number)
        return frame

    def spatial_problem(self) -> str | None:
        """Why the sources cannot carry spatial objects (SEG, Parametric Map), if so.

        Those objects place every frame in the patient: they need the Frame of
        Reference and the image orientation (projection images, secondary
        captures and some NM files have neither).
        """
        for uid, dataset in self._by_uid.items():
            if "FrameOfReferenceUID" not in dataset:
                return f"source has no Frame of Reference UID ({uid})"
            if self.frame(FrameRef(uid, 1)).geometry.orientation is None:
                return f"source has no Image Orientation (Patient) ({uid})"
        return None


_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
"""Type 2 attributes highdicom's SR reads from its first evidence unconditionally."""


def with_type2_attributes(dataset: Dataset) -> Dataset:
    """The dataset, or a copy of it with missing Type 2 patient/study attributes empty.

    Archives do hold instances without e.g. a Patient ID or Birth Date; the
    result then says "unknown" (empty), as the standard allows, instead of
    failing (highdicom refuses SEG sources without them).
    """
    missing = [keyword for keyword in _PATIENT_STUDY_TYPE2 if keyword not in dataset]
    return with_values(dataset, dict.fromkeys(missing, "")) if missing else dataset


def with_values(dataset: Dataset, values: dict[str, object]) -> Dataset:
    """A copy of a dataset's top level (elements shared) with some values set.

    For handing highdicom what it requires without touching the caller's datasets.
    """
    view = Dataset()
    view.update(dataset)
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        view.file_meta = file_meta
    for keyword, value in values.items():
        setattr(view, keyword, value)
    return view
