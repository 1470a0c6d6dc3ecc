"""An index of a DICOM folder: which files hold which series of which study and patient.

Headers are read without pixel data, so that a folder of a few hundred studies is
indexed in seconds; pixel data is read later, one series at a time, only for the
series that carry a label. SEG objects are kept apart, as masks for segmentation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class SeriesEntry:
    """The files of one series and the patient-level headers needed for splits and bias."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    header: Dataset
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class DicomIndex:
    """Image series and SEG files of a folder."""

    series: dict[str, SeriesEntry]
    segmentations: tuple[Path, ...]
    unreadable: tuple[str, ...]

    def by_study(self) -> dict[str, list[SeriesEntry]]:
        """Image series grouped by Study Instance UID."""
        studies: dict[str, list[SeriesEntry]] = {}
        for entry in self.series.values():
            studies.setdefault(entry.study_uid, []).append(entry)
        return studies

    def read_series(self, series_uid: str) -> list[Dataset]:
        """Read every instance of a series with its pixel data.

        Raises
        ------
        KeyError
            When the folder holds no such series.
        """
        return [pydicom.dcmread(path) for path in self.series[series_uid].files]


def _files(root: Path) -> Iterable[Path]:
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            yield Path(folder) / name


def index_folder(root: Path | str, progress: bool = False) -> DicomIndex:
    """Index every DICOM file under a folder (recursively), by series.

    Files that are not DICOM are skipped and counted; instances without a Series or
    Study Instance UID are skipped with a reason.

    Parameters
    ----------
    root : pathlib.Path or str
        The folder.
    progress : bool
        A progress bar over the files, shown from the first file on.

    Returns
    -------
    DicomIndex

    Raises
    ------
    FileNotFoundError
        When the folder does not exist.
    ValueError
        When it holds no DICOM image at all.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    series: dict[str, SeriesEntry] = {}
    segmentations: list[Path] = []
    unreadable: list[str] = []
    files = tqdm(_files(folder), desc="indexing DICOM headers", unit="file", disable=not progress)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            unreadable.append(f"{path}: {exc}")
            continue
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            segmentations.append(path)
            continue
        series_uid, study_uid = (
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("StudyInstanceUID", "")),
        )
        if not series_uid or not study_uid:
            unreadable.append(f"{path}: no Series/Study Instance UID")
            continue
        entry = series.get(series_uid)
        if entry is None:
            patient = str(ds.get("PatientID", "") or "")
            entry = SeriesEntry(series_uid, study_uid, patient, str(ds.get("Modality", "")), ds)
            series[series_uid] = entry
        entry.files.append(path)
    files.close()
    if unreadable:
        logger.info("%d file(s) under %s skipped (not DICOM or no UIDs)", len(unreadable), folder)
    if not series:
        raise ValueError(f"no DICOM images under {folder} ({len(unreadable)} other files)")
    return DicomIndex(series, tuple(segmentations), tuple(unreadable))
