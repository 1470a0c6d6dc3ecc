"""Real DICOM datasets built in memory for the inference tests.

Each dataset is written to bytes and read back with pydicom, so that tests see what
the node sees after a C-STORE: encoded values, not Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def read_testdata(name: str) -> Dataset:
    """Read one of pydicom's bundled test files (or pydicom-data's) by name."""
    path = get_testdata_file(name)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom test file {name} not found")
    return dcmread(path)


def roundtrip(ds: Dataset) -> Dataset:
    """Encode a dataset as a Part 10 file and read it back."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _base(
    sop_class: UID, modality: str, series_uid: str, pixels: npt.NDArray[np.integer]
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    instance_uid = generate_uid()
    ds.SOPInstanceUID = instance_uid
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()
    return ds


def ct_slice(
    hu: npt.NDArray[np.floating],
    *,
    position: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    spacing: tuple[float, float] = (0.7, 0.7),
    series_uid: str,
    instance_number: int = 1,
    acquisition: int = 1,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> Dataset:
    """One CT slice stored as int16 with Rescale Intercept -1024 (HU = stored - 1024)."""
    stored = np.clip(np.rint(hu) + 1024, -32768, 32767).astype(np.int16)
    ds = _base(CTImageStorage, "CT", series_uid, stored)
    ds.ImageType = list(image_type)
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.0
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = acquisition
    return roundtrip(ds)


def ct_series(
    volume: npt.NDArray[np.floating],
    *,
    spacing: float = 2.0,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-100.0, -100.0, 0.0),
    series_uid: str | None = None,
    acquisition: int = 1,
) -> list[Dataset]:
    """A CT stack: slice k of ``volume`` lies at ``origin + k * spacing * normal``.

    Instance numbers run against the slice order so that sorting by InstanceNumber
    would be wrong.
    """
    uid = series_uid or generate_uid()
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    return [
        ct_slice(
            volume[k],
            position=list(np.asarray(origin) + k * spacing * normal),
            orientation=orientation,
            series_uid=uid,
            instance_number=len(volume) - k,
            acquisition=acquisition,
        )
        for k in range(len(volume))
    ]


def radiograph_dataset(image: npt.NDArray[np.floating], *, monochrome1: bool = False) -> Dataset:
    """A CR image (12-bit stored values); MONOCHROME1 stores the inverted values."""
    stored = np.clip(np.rint(image), 0, 4095).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    ds = _base(ComputedRadiographyImageStorage, "CR", generate_uid(), stored)
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.BodyPartExamined = "CHEST"
    return roundtrip(ds)
