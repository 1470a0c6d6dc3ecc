"""Generated data for tests, the transfer demonstration and the demo model.

Two kinds, both reproducible from a seed:

* generic images: colour shapes (disc, square, ring, cross) on cluttered
  backgrounds, a stand-in for a large generic dataset such as ImageNet, used to
  pretrain a backbone;
* a small medical-like set: chest-radiograph-like CR images (two lung fields,
  ribs, noise) where a positive case holds a faint round opacity, written as real
  DICOM files with patient, sex, age and study headers and a labels CSV, exactly
  what a hospital would hand over.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
GENERIC_CLASSES = ("disc", "square", "ring", "cross")
_UID_ROOT = "1.2.826.0.1.3680043.10.1234."


def _grid(size: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    return rows, cols


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> npt.NDArray[np.float64]:
    """Low-frequency noise: a coarse random grid upsampled bilinearly."""
    coarse = rng.standard_normal((cells + 1, cells + 1))
    position = np.linspace(0, cells, size)
    low = np.minimum(np.floor(position).astype(int), cells - 1)
    frac = position - low
    rows = coarse[low] * (1 - frac)[:, None] + coarse[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


def _shape_mask(
    kind: int,
    rows: npt.NDArray[np.float64],
    cols: npt.NDArray[np.float64],
    center: tuple[float, float],
    radius: float,
) -> npt.NDArray[np.float64]:
    dr, dc = rows - center[0], cols - center[1]
    distance = np.hypot(dr, dc)
    if kind == 0:
        return (distance <= radius).astype(np.float64)
    if kind == 1:
        return ((np.abs(dr) <= radius * 0.85) & (np.abs(dc) <= radius * 0.85)).astype(np.float64)
    if kind == 2:
        return ((distance <= radius) & (distance >= radius * 0.55)).astype(np.float64)
    arm = radius * 0.3
    return (
        ((np.abs(dr) <= arm) & (np.abs(dc) <= radius))
        | ((np.abs(dc) <= arm) & (np.abs(dr) <= radius))
    ).astype(np.float64)


def generic_images(
    count: int, size: int, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Colour shape images and their class (index into `GENERIC_CLASSES`).

    Returns
    -------
    images : numpy.ndarray
        float32 (count, 3, size, size), roughly in [0, 1].
    classes : numpy.ndarray
        int64 (count,).
    """
    rng = np.random.default_rng(seed)
    rows, cols = _grid(size)
    images = np.empty((count, 3, size, size), dtype=np.float32)
    classes = rng.integers(0, len(GENERIC_CLASSES), count)
    for n in range(count):
        background = rng.uniform(0.2, 0.8, 3)[:, None, None] + 0.15 * _smooth_noise(rng, size, 4)
        image = np.broadcast_to(background, (3, size, size)).copy()
        for _ in range(rng.integers(0, 3)):  # clutter: other shapes, faint
            kind = int(rng.integers(0, len(GENERIC_CLASSES)))
            mask = _shape_mask(kind, rows, cols, tuple(rng.uniform(0, size, 2)), rng.uniform(2, 4))
            image += mask * rng.uniform(-0.15, 0.15, 3)[:, None, None]
        radius = rng.uniform(size * 0.12, size * 0.3)
        center = tuple(rng.uniform(radius, size - radius, 2))
        mask = _shape_mask(int(classes[n]), rows, cols, center, radius)
        contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.5) + rng.uniform(-0.1, 0.1, 3)
        image += mask * contrast[:, None, None]
        image += rng.normal(0, 0.05, image.shape)
        images[n] = image
    return images, classes.astype(np.int64)


@dataclass(frozen=True)
class Finding:
    """A kind of lesion: its label name, radius (fraction of the image) and contrast."""

    name: str
    radius: tuple[float, float]
    contrast: tuple[float, float]
    prevalence: float


OPACITY = Finding("opacity", (0.06, 0.1), (0.12, 0.2), 0.3)  # the transfer task
NODULE = Finding("nodule", (0.03, 0.05), (0.15, 0.25), 0.4)
MASS = Finding("mass", (0.10, 0.14), (0.15, 0.25), 0.4)


@dataclass(frozen=True)
class ChestCase:
    """One generated study: who, and which findings it holds."""

    patient_id: str
    sex: str
    age: int
    findings: tuple[str, ...]
    study_uid: str
    series_uid: str
    sop_uid: str


def chest_image(
    rng: np.random.Generator, size: int, present: Sequence[Finding]
) -> npt.NDArray[np.uint16]:
    """A radiograph-like 12-bit image holding the given findings inside the lungs."""
    rows, cols = _grid(size)
    image = 0.55 + 0.08 * _smooth_noise(rng, size, 3)
    lungs = np.zeros((size, size))
    fields = []
    for side in (-1, 1):
        center = (size * rng.uniform(0.45, 0.55), size * (0.5 + side * rng.uniform(0.18, 0.24)))
        axes = (size * rng.uniform(0.28, 0.34), size * rng.uniform(0.12, 0.16))
        inside = ((rows - center[0]) / axes[0]) ** 2 + ((cols - center[1]) / axes[1]) ** 2 <= 1
        lungs = np.maximum(lungs, inside)
        fields.append((center, axes))
    image -= 0.3 * lungs
    period = size / rng.uniform(7, 9)
    image += 0.05 * lungs * np.sin(2 * np.pi * (rows + 0.15 * cols) / period)  # ribs
    for finding in present:
        center, axes = fields[int(rng.integers(0, 2))]
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6)
        spot = (
            center[0] + reach * axes[0] * np.sin(angle),
            center[1] + reach * axes[1] * np.cos(angle),
        )
        radius = size * rng.uniform(*finding.radius)
        distance = np.hypot(rows - spot[0], cols - spot[1]) / radius
        image += rng.uniform(*finding.contrast) * np.clip(1 - distance**4, 0, 1)  # round, soft rim
    image += 0.04 * _smooth_noise(rng, size, 16) + rng.normal(0, 0.03, (size, size))
    return np.clip(image * 4095, 0, 4095).astype(np.uint16)


def cr_dataset(case: ChestCase, pixels: npt.NDArray[np.uint16], study_date: dt.date) -> Dataset:
    """A CR instance (MONOCHROME2, 12 bits stored) with the case's patient and study."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(case.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, case.sop_uid
    ds.PatientID, ds.PatientName = case.patient_id, f"Synthetic^{case.patient_id}"
    ds.PatientSex, ds.PatientAge = case.sex, f"{case.age:03d}Y"
    ds.PatientBirthDate = (study_date - dt.timedelta(days=int(case.age * 365.25) + 30)).strftime(
        "%Y%m%d"
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = case.study_uid, case.series_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyID, ds.AccessionNumber = "1", case.study_uid[-8:]
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    return ds


Drawer = Callable[[np.random.Generator, Sequence[str]], npt.NDArray[np.generic]]


def write_cr_set(
    folder: Path | str,
    patients: int,
    labels: Sequence[str],
    prevalence: Sequence[float],
    draw: Drawer,
    seed: int = 0,
    studies_per_patient: int = 1,
) -> list[ChestCase]:
    """Write a labelled CR set as DICOM files plus ``labels.csv`` (one row per study).

    Parameters
    ----------
    folder : pathlib.Path or str
        Created if needed; files go to ``folder/dicom`` and ``folder/labels.csv``.
    patients : int
        Number of patients, each with a sex and an age.
    labels : sequence of str
        The label names (CSV columns).
    prevalence : sequence of float
        Per label, the share of studies that hold it.
    draw : callable
        ``draw(rng, present_labels)`` returns the image (stored values 0-4095).
    seed : int
        Everything (images, patients, UIDs) follows from it.
    studies_per_patient : int
        Studies per patient (patient-level splits keep them together).

    Returns
    -------
    list of ChestCase
    """
    root = Path(folder)
    (root / "dicom").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for p in range(patients):
        sex = str(rng.choice(["F", "M"]))
        age = int(rng.integers(20, 90))
        for s in range(studies_per_patient):
            prefix = f"{_UID_ROOT}{seed}.{p}.{s}"
            present = tuple(
                n for n, share in zip(labels, prevalence, strict=True) if rng.random() < share
            )
            case = ChestCase(
                patient_id=f"SYN{seed:03d}{p:05d}",
                sex=sex,
                age=age,
                findings=present,
                study_uid=f"{prefix}.1",
                series_uid=f"{prefix}.2",
                sop_uid=f"{prefix}.3",
            )
            pixels = np.clip(np.rint(draw(rng, present)), 0, 4095).astype(np.uint16)
            ds = cr_dataset(case, pixels, dt.date(2024, 1, 1) + dt.timedelta(days=30 * s))
            ds.save_as(root / "dicom" / f"{case.patient_id}_{s}.dcm", enforce_file_format=True)
            cases.append(case)
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", *labels])
        for case in cases:
            writer.writerow([case.study_uid, *(int(n in case.findings) for n in labels)])
    return cases


def write_chest_set(
    folder: Path | str,
    patients: int,
    findings: Sequence[Finding] = (OPACITY,),
    size: int = 128,
    seed: int = 0,
    studies_per_patient: int = 1,
) -> list[ChestCase]:
    """Write `chest_image` radiographs holding the given findings; see `write_cr_set`."""
    by_name = {f.name: f for f in findings}

    def draw(rng: np.random.Generator, present: Sequence[str]) -> npt.NDArray[np.generic]:
        return chest_image(rng, size, [by_name[n] for n in present])

    return write_cr_set(
        folder,
        patients,
        [f.name for f in findings],
        [f.prevalence for f in findings],
        draw,
        seed,
        studies_per_patient,
    )


def _ct_slice(
    series: ChestCase,
    index: int,
    position: float,
    pixels: npt.NDArray[np.int16],
    frame_of_reference: str,
) -> Dataset:
    sop_uid = f"{series.series_uid}.{index + 1}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
    ds.PatientID, ds.PatientName = series.patient_id, f"Synthetic^{series.patient_id}"
    ds.PatientSex, ds.PatientAge, ds.PatientBirthDate = series.sex, f"{series.age:03d}Y", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series.study_uid, series.series_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "Synthetic", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.KVP = 120
    ds.PixelData = pixels.tobytes()
    return ds


def write_segmentation_set(
    folder: Path | str, patients: int, slices: int = 6, size: int = 64, seed: int = 0
) -> list[ChestCase]:
    """Write CT series with a dense round lesion on some slices, and a SEG per series.

    The SEG (highdicom, binary, one segment labelled ``lesion``) marks the lesion's
    pixels (HU above 100 inside it), as a reader's annotation would.

    Returns
    -------
    list of ChestCase
        One per series; ``findings`` is ``("lesion",)`` where any slice holds one.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    root = Path(folder)
    (root / "dicom").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = _grid(size)
    cases = []
    for p in range(patients):
        prefix = f"{_UID_ROOT}{seed}.9{p}"
        center = rng.uniform(size * 0.35, size * 0.65, 2)
        radius = rng.uniform(size * 0.06, size * 0.14)
        middle, extent = rng.uniform(1, slices - 1), rng.uniform(0.5, 2.5)
        series = ChestCase(
            f"SEG{seed:03d}{p:05d}",
            str(rng.choice(["F", "M"])),
            int(rng.integers(20, 90)),
            ("lesion",),
            f"{prefix}.1",
            f"{prefix}.2",
            f"{prefix}.3",
        )
        datasets, masks = [], []
        for index in range(slices):
            hu = np.full((size, size), -1000.0)
            body = ((rows - size / 2) / (size * 0.45)) ** 2 + (
                (cols - size / 2) / (size * 0.4)
            ) ** 2
            hu[body <= 1] = 40.0
            shrink = max(0.0, 1 - ((index - middle) / extent) ** 2)
            lesion = np.hypot(rows - center[0], cols - center[1]) <= radius * np.sqrt(shrink)
            hu[lesion] = 180.0
            hu += rng.normal(0, 15, hu.shape)
            masks.append(lesion)
            ds = _ct_slice(series, index, 2.0 * index, hu.astype(np.int16), f"{prefix}.4")
            datasets.append(ds)
            ds.save_as(
                root / "dicom" / f"{series.patient_id}_{index:03d}.dcm", enforce_file_format=True
            )
        description = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="lesion",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=np.stack(masks),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=f"{prefix}.5",
            series_number=2,
            sop_instance_uid=f"{prefix}.6",
            instance_number=1,
            manufacturer="Synthetic",
            manufacturer_model_name="Annotation",
            software_versions="1",
            device_serial_number="1",
        )
        seg.save_as(root / "dicom" / f"{series.patient_id}_seg.dcm")
        cases.append(series)
    return cases
