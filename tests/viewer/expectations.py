"""What OHIF should show for each result object, read from the object itself.

OHIF (extensions/cornerstone-dicom-sr, ``getSopClassHandlerModule``) merges TID 1500
measurement groups that share a Tracking Unique Identifier, draws the first SCOORD of
each merged group on its referenced image, and labels it with one line per NUM item:
``f"{concept name meaning}: {value:.2f} {unit code value}"``. The SEG panel lists each
segment's Segment Label. The tests compare the page with these, so a result that shows
the wrong numbers or labels fails as surely as one that does not show at all.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import SegmentationStorage

IMAGING_MEASUREMENTS = "126010"
MEASUREMENT_GROUP = "125007"


def segment_labels(seg: Dataset) -> list[str]:
    """The segment labels a SEG carries, as OHIF's segmentation panel lists them.

    Raises
    ------
    ValueError
        When ``seg`` is not a Segmentation.
    """
    if seg.SOPClassUID != SegmentationStorage:
        raise ValueError(f"not a SEG: SOP class {seg.SOPClassUID}")
    return [str(segment.SegmentLabel) for segment in seg.SegmentSequence]


def measurement_labels(sr: Dataset) -> list[str]:
    """The label lines OHIF draws beside the regions of a TID 1500 SR, in report order.

    Raises
    ------
    ValueError
        When ``sr`` holds no Imaging Measurements container (not a TID 1500 report).
    """
    labels: list[str] = []
    for group in _measurement_groups(sr):
        for item in group.ContentSequence:
            if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                labels.append(_label(item))
    return list(dict.fromkeys(labels))


def _measurement_groups(sr: Dataset) -> list[Dataset]:
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS:
            return [
                group
                for group in item.get("ContentSequence", [])
                if group.ConceptNameCodeSequence[0].CodeValue == MEASUREMENT_GROUP
            ]
    raise ValueError(f"SR {sr.SOPInstanceUID} has no Imaging Measurements container")


def _label(item: Dataset) -> str:
    value = item.MeasuredValueSequence[0]
    unit = value.MeasurementUnitsCodeSequence[0].CodeValue
    meaning = item.ConceptNameCodeSequence[0].CodeMeaning
    return f"{meaning}: {float(value.NumericValue):.2f} {unit}"
