"""Real DICOM studies for the orchestration tests, built from pydicom's bundled files.

A CT series is the real 512 x 512 slice ``693_UNCI.dcm`` (or the 128 x 128
``CT_small.dcm``) repeated along z with fresh UIDs, so that the demo bone model has
real anatomy to find; a radiograph is the real ``RG1_UNCI.dcm``.
"""

from __future__ import annotations

import copy
import site
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def pydicom_file(name: str) -> Path:
    """A file of pydicom's test data (bundled, or from pydicom-data's local store)."""
    found = get_testdata_file(name, download=False)
    if found is not None:
        return Path(str(found))
    for root in site.getsitepackages():
        candidate = Path(root) / "data_store" / "data" / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"pydicom test file {name!r} is not installed")


def ct_series(
    folder: Path, slices: int, template: str = "CT_small.dcm", study_uid: str | None = None
) -> list[Path]:
    """Write a CT series of ``slices`` slices 2.5 mm apart; returns the file paths."""
    source = pydicom.dcmread(pydicom_file(template))
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    x, y, z0 = (float(v) for v in source.get("ImagePositionPatient", [0, 0, 0]))
    paths = []
    for index in range(slices):
        ds: Dataset = copy.deepcopy(source)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.SeriesNumber = 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [x, y, z0 + 2.5 * index]
        ds.SliceLocation = z0 + 2.5 * index
        ds.SliceThickness = 2.5
        ds.Modality = "CT"
        path = folder / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def radiograph(folder: Path, template: str = "RG1_UNCI.dcm") -> Path:
    """Write a CR radiograph as a new study; returns the file path."""
    ds = pydicom.dcmread(pydicom_file(template))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
