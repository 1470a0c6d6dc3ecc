"""Reading written objects back with highdicom's own parsers."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code


def saved(dataset: Dataset, folder: Path, name: str) -> Path:
    """Write a dataset as a DICOM file and return its path."""
    path = folder / f"{name}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def read_report(dataset: Dataset, folder: Path) -> hd.sr.MeasurementReport:
    """Save an SR and read its TID 1500 content back with ``srread``."""
    report = hd.sr.srread(saved(dataset, folder, "report-roundtrip"))
    return report.content  # type: ignore[no-any-return]


def region_reference(
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
) -> tuple[str, list[int]]:
    """(SOP Instance UID, frame numbers) of the image a planar region is drawn on."""
    reference = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    numbers = reference.get("ReferencedFrameNumber")
    if numbers is None:
        return str(reference.ReferencedSOPInstanceUID), []
    frames = [int(n) for n in numbers] if isinstance(numbers, MultiValue) else [int(numbers)]
    return str(reference.ReferencedSOPInstanceUID), frames


def value_of(group: hd.sr.templates.Template, code: Code) -> float:
    """The single measurement named ``code`` in a measurement group."""
    name = hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    (measurement,) = group.get_measurements(name=name)
    return float(measurement.value)


def evaluation_of(group: hd.sr.templates.Template, code: hd.sr.CodedConcept) -> str:
    """Code value of the qualitative evaluation named ``code`` (present/absent)."""
    (evaluation,) = group.get_qualitative_evaluations(name=code)
    return str(evaluation.value.value)


def seg_frames(seg: Dataset) -> dict[tuple[str, int], bytes]:
    """A binary SEG's frames by (referenced source SOP Instance UID, segment number).

    Keyed by what each frame overlays rather than by its position, so that two SEGs
    of one mask compare equal whatever order (or UIDs) their writers chose.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    frames = {}
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        segment = int(identification[0].ReferencedSegmentNumber)
        frames[(str(source.ReferencedSOPInstanceUID), segment)] = frame.tobytes()
    return frames
