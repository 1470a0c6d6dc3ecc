"""Restricting a chain step's input to a mask: pixels outside it set to the series'
lowest stored value, geometry and UIDs kept, the originals untouched, whatever the
transfer syntax the instances came in."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.work.step_input import StepInputError, restrict_to_mask
from tests.orchestration.studies import pydicom_file


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_outside_the_mask_is_the_lowest_value_and_the_rest_is_kept(name: str) -> None:
    original = pydicom.dcmread(pydicom_file(name))
    syntax = original.file_meta.TransferSyntaxUID
    pixels = original.pixel_array.copy()
    mask = np.zeros(pixels.shape, bool)
    mask[10:30, 5:25] = True
    (restricted,) = restrict_to_mask([original], mask[np.newaxis])
    expected = np.where(mask, pixels, pixels.min())
    assert restricted.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    reread = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_saved(restricted)))
    assert np.array_equal(reread.pixel_array, expected)
    assert reread.SOPInstanceUID == original.SOPInstanceUID
    assert reread.ImagePositionPatient == original.ImagePositionPatient
    assert original.file_meta.TransferSyntaxUID == syntax  # the original is untouched
    assert np.array_equal(pydicom.dcmread(pydicom_file(name)).pixel_array, original.pixel_array)


def _saved(dataset: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return bytes(buffer.getvalue())


def test_the_lowest_value_is_the_series_not_the_slice() -> None:
    first = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    second = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    second.PixelData = (second.pixel_array + 500).astype(second.pixel_array.dtype).tobytes()
    lowest = int(first.pixel_array.min())
    mask = np.zeros((2, *first.pixel_array.shape), bool)
    restricted = restrict_to_mask([first, second], mask)
    assert all(int(ds.pixel_array.max()) == lowest for ds in restricted)


def test_a_mask_of_another_size_is_refused() -> None:
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    with pytest.raises(StepInputError, match="differ from its mask frame"):
        restrict_to_mask([dataset], np.zeros((1, 4, 4), bool))
