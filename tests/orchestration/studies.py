"""Real DICOM studies for the orchestration tests, built from pydicom's bundled files.

A CT series is the real 512 x 512 slice ``693_UNCI.dcm`` (or the 128 x 128
``CT_small.dcm``) repeated along z with fresh UIDs, so that the demo bone model has
real anatomy to find; a radiograph keeps the real ``RG1_UNCI.dcm`` header around the
demo models' own synthetic chest image with a mass, so that the classifier finds it.
"""

from __future__ import annotations

import copy
import importlib.util
import site
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.conftest import REPO_ROOT

MODELS = REPO_ROOT / "models"


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


def _demo_builder() -> ModuleType:
    """``models/build_demo_models.py``, for its synthetic radiographs (no torch needed)."""
    name = "build_demo_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MODELS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def radiograph(folder: Path, seed: int = 7, template: str = "RG1_UNCI.dcm") -> Path:
    """Write a CR study: the real header of ``template`` around a synthetic chest
    radiograph with a mass (what the demo classifier finds), as a new study."""
    image, _ = _demo_builder().radiograph(
        np.random.default_rng(seed), 512, 448, nodule=False, mass=True
    )
    pixels = np.clip(image, 0, 4095).astype(np.uint16)
    ds = pydicom.dcmread(pydicom_file(template))
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
