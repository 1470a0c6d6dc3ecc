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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
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
        radius = rng.uniform(size * 0.06, size * 0.25)
        center = tuple(rng.uniform(radius, size - radius, 2))
        mask = _shape_mask(int(classes[n]), rows, cols, center, radius)
        contrast = rng.uniform(0.15, 0.6, 3) * rng.choice([-1.0, 1.0], 3)
        image += mask * contrast[:, None, None]
        image += rng.normal(0, 0.05, image.shape)
        images[n] = image
    return images, classes.astype(np.int64)


@dataclass(frozen=True)
class ChestCase:
    """One generated study: who, and whether (and where) it holds the finding."""

    patient_id: str
    sex: str
    age: int
    positive: bool
    study_uid: str
    series_uid: str
    sop_uid: str


def chest_image(
    rng: np.random.Generator, size: int, positive: bool, contrast: float = 0.35
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
    """A radiograph-like 12-bit image and the mask of its opacity (empty if negative)."""
    rows, cols = _grid(size)
    body = 0.55 + 0.08 * _smooth_noise(rng, size, 3)
    lungs = np.zeros((size, size))
    centers = []
    for side in (-1, 1):
        center = (size * rng.uniform(0.45, 0.55), size * (0.5 + side * rng.uniform(0.18, 0.24)))
        axes = (size * rng.uniform(0.28, 0.34), size * rng.uniform(0.12, 0.16))
        inside = ((rows - center[0]) / axes[0]) ** 2 + ((cols - center[1]) / axes[1]) ** 2 <= 1
        lungs = np.maximum(lungs, inside)
        centers.append((center, axes))
    image = body - 0.3 * lungs
    period = size / rng.uniform(7, 9)
    image += 0.05 * lungs * np.sin(2 * np.pi * (rows + 0.15 * cols) / period)  # ribs
    mask = np.zeros((size, size), dtype=bool)
    if positive:
        (center, axes) = centers[int(rng.integers(0, 2))]
        angle = rng.uniform(0, 2 * np.pi)
        reach = rng.uniform(0, 0.6)
        spot = (
            center[0] + reach * axes[0] * np.sin(angle),
            center[1] + reach * axes[1] * np.cos(angle),
        )
        sigma = size * rng.uniform(0.03, 0.05)
        blob = np.exp(-((rows - spot[0]) ** 2 + (cols - spot[1]) ** 2) / (2 * sigma**2))
        image += contrast * 0.3 * blob
        mask = blob > 0.5
    image += 0.04 * _smooth_noise(rng, size, 16) + rng.normal(0, 0.03, (size, size))
    return np.clip(image * 4095, 0, 4095).astype(np.uint16), mask


def _cr_dataset(case: ChestCase, pixels: npt.NDArray[np.uint16], study_date: dt.date) -> Dataset:
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


def write_chest_set(
    folder: Path | str,
    patients: int,
    prevalence: float = 0.3,
    size: int = 128,
    seed: int = 0,
    contrast: float = 0.35,
    studies_per_patient: int = 1,
) -> list[ChestCase]:
    """Write a labelled CR set as DICOM files plus ``labels.csv`` (per study).

    Parameters
    ----------
    folder : pathlib.Path or str
        Created if needed; files go to ``folder/dicom`` and ``folder/labels.csv``.
    patients : int
        Number of patients.
    prevalence : float
        Share of positive studies.
    size : int
        Rows and columns of the images.
    seed : int
        Everything (images, patients, UIDs) follows from it.
    contrast : float
        Strength of the opacity; lower is harder.
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
            case = ChestCase(
                patient_id=f"SYN{seed:03d}{p:05d}",
                sex=sex,
                age=age,
                positive=bool(rng.random() < prevalence),
                study_uid=f"{prefix}.1",
                series_uid=f"{prefix}.2",
                sop_uid=f"{prefix}.3",
            )
            pixels, _ = chest_image(rng, size, case.positive, contrast)
            ds = _cr_dataset(case, pixels, dt.date(2024, 1, 1) + dt.timedelta(days=30 * s))
            ds.save_as(root / "dicom" / f"{case.patient_id}_{s}.dcm", enforce_file_format=True)
            cases.append(case)
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "opacity"])
        for case in cases:
            writer.writerow([case.study_uid, int(case.positive)])
    return cases
