"""Segmentation truth for external validation: DICOM SEG objects or NIfTI label maps.

Either is read onto the source frames a prediction covers, as (frames, rows, columns,
labels) masks:

* a DICOM SEG references its source series and instances; its frames are read with
  highdicom by source instance (or by frame number for a multi-frame source), its
  segments matched to the package's labels by Segment Label, so no geometry is needed;
* a NIfTI label map (what 3D Slicer, ITK-SNAP and nnU-Net datasets hold) is named after
  its source series, ``SERIES_INSTANCE_UID.nii`` or ``.nii.gz``; value ``k`` is the
  package's ``k``-th label (nnU-Net's convention, 0 background). Each source pixel's
  centre (Image Position and Orientation, Pixel Spacing; DICOM's LPS) is taken through
  the file's affine (RAS) to the nearest NIfTI voxel, so a map written in another axis
  order or orientation (dcm2niix's) lands on the right pixels; pixels outside the map
  are background. It needs ``nibabel`` (in the ``train`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from inference.finetune.data import SkippedInputs, segment_numbers
from inference.finetune.dicom_index import SEG_SOP_CLASS
from inference.prediction import Segmentation
from inference.preprocessing.geometry import frame_geometry

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SegTruth:
    """A DICOM SEG, with the segment number of each package label (0: none)."""

    path: Path
    series_uid: str
    seg: hd.seg.Segmentation
    numbers: tuple[int, ...]

    def masks(self, prediction: Segmentation, datasets: Sequence[Dataset]) -> npt.NDArray[np.bool_]:
        """The SEG's frames on the prediction's source frames; a label without a segment
        is empty."""
        frames = prediction.frames
        present = [n for n in self.numbers if n]
        options: dict[str, Any] = {
            "segment_numbers": present,
            "ignore_spatial_locations": True,
            "assert_missing_frames_are_empty": True,
        }
        if len({f.sop_instance_uid for f in frames}) == 1 and len(frames) > 1:  # multi-frame
            pixels = self.seg.get_pixels_by_source_frame(
                source_sop_instance_uid=frames[0].sop_instance_uid,
                source_frame_numbers=[f.frame_number for f in frames],
                **options,
            )
        else:
            pixels = self.seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[f.sop_instance_uid for f in frames], **options
            )
        truth = np.zeros((*prediction.shape, len(self.numbers)), dtype=bool)
        for k, number in enumerate(self.numbers):
            if number:
                truth[..., k] = pixels[..., present.index(number)] > 0
        return truth


@dataclass(frozen=True)
class NiftiTruth:
    """A NIfTI label map of one series (value k: the package's k-th label)."""

    path: Path
    series_uid: str

    def masks(self, prediction: Segmentation, datasets: Sequence[Dataset]) -> npt.NDArray[np.bool_]:
        """The map's nearest voxel under every source pixel's centre, per label.

        Raises
        ------
        ValueError
            When a source frame has no position, orientation or pixel spacing.
        ImportError
            When nibabel is not installed.
        """
        import nibabel

        image: Any = nibabel.load(self.path)
        labels = np.asarray(image.dataobj)
        to_voxel = np.linalg.inv(np.asarray(image.affine, dtype=np.float64))
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        frames, rows, columns = prediction.shape
        values = np.zeros((frames, rows, columns), dtype=np.int64)
        for index, ref in enumerate(prediction.frames):
            lps = _pixel_centres(by_uid[ref.sop_instance_uid], ref.frame_number - 1, rows, columns)
            ras = lps @ _LPS_TO_RAS.T
            voxel = np.rint(ras @ to_voxel[:3, :3].T + to_voxel[:3, 3]).astype(np.int64)
            inside = np.all((voxel >= 0) & (voxel < labels.shape[:3]), axis=-1)
            found = np.zeros((rows, columns), dtype=np.int64)
            found[inside] = labels[tuple(voxel[inside].T)]
            values[index] = found
        return np.stack([values == k + 1 for k in range(len(prediction.labels))], axis=-1)


def _pixel_centres(ds: Dataset, frame: int, rows: int, columns: int) -> npt.NDArray[np.float64]:
    """(rows, columns, 3) patient coordinates (LPS, mm) of every pixel centre of a frame."""
    geometry = frame_geometry(ds, frame)
    if geometry.position is None or geometry.orientation is None or geometry.pixel_spacing is None:
        raise ValueError(
            f"SOP instance {ds.SOPInstanceUID} frame {frame + 1}: no ImagePositionPatient, "
            "ImageOrientationPatient or PixelSpacing to place a NIfTI label map on"
        )
    along_row = np.asarray(geometry.orientation[:3]) * geometry.pixel_spacing[1]
    along_column = np.asarray(geometry.orientation[3:]) * geometry.pixel_spacing[0]
    r, c = np.mgrid[:rows, :columns]
    return np.asarray(geometry.position) + c[..., None] * along_row + r[..., None] * along_column


def _dicom_headers(root: Path) -> list[tuple[Path, Dataset]]:
    found: list[tuple[Path, Dataset]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.endswith(NIFTI_SUFFIXES):
            continue
        try:
            found.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except (InvalidDicomError, OSError, ValueError):
            continue
    return found


def seg_files(folder: Path | str) -> list[Path]:
    """The DICOM SEG files under a folder (recursively), read header-only.

    Raises
    ------
    FileNotFoundError
        When the folder does not exist.
    ValueError
        When it is a file (a classification CSV given to a segmentation package).
    """
    root = _label_folder(folder)
    return [path for path, ds in _dicom_headers(root) if ds.get("SOPClassUID") == SEG_SOP_CLASS]


def _label_folder(folder: Path | str) -> Path:
    root = Path(folder)
    if root.is_file():
        raise ValueError(
            f"{root} is a file: the labels of a segmentation package are a folder of DICOM SEG "
            "objects (or NIfTI label maps named SERIES_UID.nii.gz)"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation label folder not found: {root}")
    return root


def nifti_files(folder: Path | str) -> list[Path]:
    """The NIfTI files under a folder (recursively)."""
    root = _label_folder(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _series_uid(path: Path) -> str:
    name = path.name
    return next(name[: -len(s)] for s in NIFTI_SUFFIXES if name.endswith(s))


Truth = SegTruth | NiftiTruth
"""One annotated series: where its truth came from, and its masks on a prediction."""


def truths(
    segs: Sequence[Path], niftis: Sequence[Path], names: Sequence[str], skipped: SkippedInputs
) -> list[Truth]:
    """Every SEG and NIfTI truth; a SEG with no segment of the package's labels is
    recorded as skipped."""
    found: list[Truth] = []
    for path in segs:
        seg = hd.seg.segread(path)
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        try:
            numbers = segment_numbers(seg, names, path)
        except ValueError as exc:  # a SEG of other structures
            skipped.add("no_label", str(exc))
            continue
        found.append(SegTruth(path, series_uid, seg, tuple(numbers)))
    found += [NiftiTruth(path, _series_uid(path)) for path in niftis]
    return found
