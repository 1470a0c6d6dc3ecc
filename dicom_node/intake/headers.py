"""The header fields of a received instance that the database indexes.

Read from the spooled file without touching pixel data (parsing stops before it and
large values are deferred), decoded with the dataset's own Specific Character Set, so
that routing and status never re-read files and never see mojibake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from dicom_node.errors import DicomNodeError
from dicom_node.uid_syntax import is_uid

# Study- and series-level keywords kept in Series.routing_fields (route `match` keys).
STUDY_KEYWORDS = (
    "StudyDescription",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
    "StationName",
    "PatientSex",
    "PatientAge",
    "ModalitiesInStudy",
)
SERIES_KEYWORDS = (
    "Modality",
    "SOPClassUID",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "BodyPartExamined",
    "ProtocolName",
    "Manufacturer",
    "ManufacturerModelName",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
    "ImageType",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsAllocated",
    "NumberOfFrames",
    "ConvolutionKernel",
    "KVP",
    "ContrastBolusAgent",
    "MagneticFieldStrength",
    "ScanningSequence",
    "SequenceName",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "PatientPosition",
    "FrameOfReferenceUID",
)
# Values longer than this are not routing material (and would bloat the index).
MAX_HEADER_VALUE = 256
# Every study- and instance-level field the index needs comes before Instance Number;
# only the series-level routing fields (groups 0018, 0028, ...) come after it.
_INSTANCE_NUMBER = Tag(0x0020, 0x0013)


def _after_instance_number(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _INSTANCE_NUMBER


class HeaderError(DicomNodeError):
    """A received dataset cannot be indexed; ``reason`` says why, ``status`` what to answer."""

    def __init__(self, reason: str, status: int) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


@dataclass(frozen=True)
class InstanceHeaders:
    """What the index needs of one instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    instance_number: int | None = None
    # Study- and series-level keyword -> value as text, for routing (empty in a short read).
    routing_fields: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        return None  # binary (OB/UN) values are not routing material
    else:
        text = str(value)
    text = text.strip()
    return text[:MAX_HEADER_VALUE] if text else None


def _get(dataset: Dataset, keyword: str) -> str | None:
    try:
        return _text(dataset.get(keyword))
    except (ValueError, TypeError, LookupError, OverflowError):
        return None  # a malformed optional value is not a reason to refuse the instance


def _int(dataset: Dataset, keyword: str) -> int | None:
    text = _get(dataset, keyword)
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _uid(dataset: Dataset, keyword: str) -> str:
    value = _get(dataset, keyword)
    if not value:
        raise HeaderError(f"missing {keyword}", 0xC220)
    if len(value) > 64:
        raise HeaderError(f"{keyword} longer than 64 characters: {value!r}", 0xC221)
    if not is_uid(value):
        # UIDs name spool files and fill log lines: only the standard's syntax passes.
        raise HeaderError(
            f"{keyword} is not a UID (digits and dots, no leading zeros): {value!r}", 0xC223
        )
    return value


def _read(path: Path, series_fields: bool) -> Dataset:
    if series_fields:
        return dcmread(path, stop_before_pixels=True, defer_size="64 KB")
    with path.open("rb") as handle:
        return read_partial(handle, stop_when=_after_instance_number, defer_size="64 KB")


def read_headers(
    path: Path, expected_sop_instance_uid: str | None = None, *, series_fields: bool = True
) -> InstanceHeaders:
    """Parse the indexed fields of the DICOM file at ``path``, stopping before pixel data.

    Parameters
    ----------
    path
        A DICOM file (preamble and file meta, as pynetdicom writes received data).
    expected_sop_instance_uid
        The Affected SOP Instance UID of the C-STORE request; the dataset must agree.
    series_fields
        False: stop after Instance Number and leave ``routing_fields`` (the series'
        routing fields) empty, for an instance of a series already indexed; on a CT header that
        halves the parsing, which every sender waits on.

    Raises
    ------
    HeaderError
        The dataset does not parse (status 0xC210), lacks a Study, Series or SOP
        Instance UID (0xC220), has one longer than 64 characters (0xC221) or not in the
        UID syntax (0xC223), or its SOP Instance UID differs from the request (0xC222).
    """
    try:
        dataset = _read(path, series_fields)
        # Touch the charset now so that a broken value fails here, with a reason.
        dataset.get("SpecificCharacterSet")
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise HeaderError(f"dataset does not parse: {type(exc).__name__}: {exc}", 0xC210) from exc
    study_uid = _uid(dataset, "StudyInstanceUID")
    series_uid = _uid(dataset, "SeriesInstanceUID")
    sop_uid = _uid(dataset, "SOPInstanceUID")
    if expected_sop_instance_uid is not None and sop_uid != expected_sop_instance_uid.strip():
        raise HeaderError(
            f"SOP Instance UID {sop_uid!r} disagrees with the request's "
            f"{expected_sop_instance_uid!r}",
            0xC222,
        )
    sop_class = _get(dataset, "SOPClassUID") or _get(dataset.file_meta, "MediaStorageSOPClassUID")
    routing_fields = (
        {
            keyword: value
            for keyword in (*STUDY_KEYWORDS, *SERIES_KEYWORDS)
            if (value := _get(dataset, keyword)) is not None
        }
        if series_fields
        else {}
    )
    return InstanceHeaders(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class or "",
        patient_id=_get(dataset, "PatientID"),
        patient_name=_get(dataset, "PatientName"),
        accession_number=_get(dataset, "AccessionNumber"),
        study_date=_get(dataset, "StudyDate"),
        study_description=_get(dataset, "StudyDescription"),
        modality=_get(dataset, "Modality"),
        series_number=_int(dataset, "SeriesNumber"),
        series_description=_get(dataset, "SeriesDescription"),
        body_part_examined=_get(dataset, "BodyPartExamined"),
        instance_number=_int(dataset, "InstanceNumber"),
        routing_fields=routing_fields,
    )
