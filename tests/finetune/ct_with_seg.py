"""CT series with known masks, and SEG objects that hold any mask on them, for evaluate.

Each series is a stack of small axial CT slices with a dense (bone-like, 1000 HU) box
in soft tissue; instance numbers run against the slice positions and files are named
in neither order, so a mapping of SEG frames to slices by file or instance order
would be caught.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.sr_writer.plain_seg import plain_seg

BONE = "high-attenuation structure"  # the label of models/demo-ct-bone
PIXEL_MM = (0.8, 0.6)
SLICE_MM = 2.5


@dataclass(frozen=True)
class SyntheticSeries:
    """One written series: its instances (slice order) and the box mask (slice order)."""

    datasets: list[Dataset]
    box: npt.NDArray[np.bool_]


def _slice(
    hu: npt.NDArray[np.float64], k: int, slices: int, uids: dict[str, str], header: dict[str, str]
) -> Dataset:
    meta = FileMetaDataset()
    sop_uid = generate_uid()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame"], ""
    ds.PatientName, ds.PatientBirthDate, ds.ReferringPhysicianName = "Synthetic^Bone", "", ""
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.StudyTime, ds.StudyID, ds.AccessionNumber = "120000", "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, slices - k
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, SLICE_MM * k]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = list(PIXEL_MM), SLICE_MM
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = np.rint(hu).astype(np.int16).tobytes()
    return ds


def write_series(
    folder: Path,
    rng: np.random.Generator,
    header: dict[str, str],
    slices: int = 6,
    size: int = 48,
) -> SyntheticSeries:
    """Write one CT series under ``folder`` with a random 1000 HU box; its instances.

    ``header`` holds patient and scanner attributes (PatientID, PatientSex,
    PatientAge, Manufacturer, StudyDate).
    """
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    low = rng.integers([1, size // 6, size // 6], [2, size // 3, size // 3])
    high = low + rng.integers([2, size // 4, size // 4], [slices - 1, size // 2, size // 2])
    box = np.zeros((slices, size, size), dtype=bool)
    box[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = True
    datasets = []
    for k in range(slices):
        hu = np.full((size, size), 40.0)
        hu[box[k]] = 1000.0
        ds = _slice(hu, k, slices, uids, header)
        datasets.append(ds)
        ds.save_as(folder / f"{uids['series']}-{(k * 7) % slices}.dcm", enforce_file_format=True)
    return SyntheticSeries(datasets, box)


def write_seg(
    path: Path, datasets: Sequence[Dataset], masks: npt.NDArray[np.bool_], label: str = BONE
) -> None:
    """A binary SEG (one segment named ``label``) of ``masks`` (slice order) on a series."""
    seg = plain_seg(
        list(datasets),
        np.asarray(masks, dtype=bool),
        label=label,
        manufacturer="Reader",
        model_name="Annotation",
        version="1",
        automatic=False,
        series_number=2,
    )
    seg.save_as(path)
