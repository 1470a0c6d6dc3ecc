"""Real sources from pydicom's test data, and helpers to name their frames."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from inference import CodedConcept, FrameRef


def load(name: str) -> Dataset:
    """A pydicom test file by name (bundled or from pydicom-data), read as it is."""
    path = get_testdata_file(name)
    if path is None:
        matches = get_charset_files(name)
        if not matches:
            raise FileNotFoundError(f"pydicom test file {name} not found")
        path = matches[0]
    return pydicom.dcmread(path)


def single_frame_series(name: str, count: int, spacing: float = 2.5) -> list[Dataset]:
    """A series of ``count`` slices made from one test file, stacked along its normal.

    Only instance identity and position change, so the slices stay as real as the
    file they come from.
    """
    first = load(name)
    series = generate_uid(entropy_srcs=[name, "series", str(count)])
    normal = np.cross(
        np.array(first.ImageOrientationPatient[:3], dtype=float),
        np.array(first.ImageOrientationPatient[3:], dtype=float),
    )
    slices = []
    for index in range(count):
        ds = copy.deepcopy(first)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, str(count), str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        position = np.array(first.ImagePositionPatient, dtype=float) + index * spacing * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        slices.append(ds)
    return slices


def frame_refs(sources: list[Dataset]) -> tuple[FrameRef, ...]:
    """Every frame of the sources, in order."""
    refs = []
    for ds in sources:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        refs.extend(FrameRef(str(ds.SOPInstanceUID), n) for n in range(1, frames + 1))
    return tuple(refs)


def concept(code: Code) -> CodedConcept:
    return CodedConcept(code.value, code.scheme_designator, code.meaning)
