"""Every image in pydicom's test data decodes, or is left out with a reason.

Compressed variants must decode to the same pixels as their uncompressed twins, so
that a decoder plug-in that is silently wrong fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from inference.preprocessing.pixels import DecodeError, decode
from inference.preprocessing.stacks import list_frames

SITE = Path(pydicom.__file__).resolve().parent.parent
FOLDERS = [SITE / "pydicom" / "data" / "test_files", SITE / "data_store" / "data"]
FILES = sorted(p for folder in FOLDERS for p in folder.glob("*.dcm"))
SLOW_DECODE = {"color3d_jpeg_baseline.dcm"}  # 120 colour JPEG frames: about 10 s here


def _cases() -> list[object]:
    return [
        pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW_DECODE else [])
        for p in FILES
    ]


def _path(name: str) -> Path:
    return next(p for p in FILES if p.name == name)


def test_test_data_is_present() -> None:
    assert len(FILES) > 100


# The files' own faults, which pydicom reports as warnings while reading them:
@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
@pytest.mark.parametrize("path", _cases())
def test_each_file_decodes_or_is_skipped_with_a_reason(path: Path) -> None:
    try:
        ds = dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        pytest.skip(f"not readable as DICOM: {exc}")
    frames, skipped = list_frames([ds])
    if not frames:
        assert skipped and skipped[0], "a file without frames must say why"
        pytest.skip(skipped[0])
    try:
        image = decode(ds)
    except DecodeError as exc:
        assert str(exc), "a decode failure must carry its reason"
        pytest.skip(str(exc))
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape[:3] == (len(frames), frames[0].rows, frames[0].columns)
    assert image.pixels.shape[3] in (1, 3)
    assert np.isfinite(image.pixels).all()


TWINS = [
    ("MR_small.dcm", "MR_small_RLE.dcm", 0),
    ("MR_small.dcm", "MR_small_bigendian.dcm", 0),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm", 0),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", 0),
    ("MR_small.dcm", "MR_small_expb.dcm", 0),
    ("693_UNCR.dcm", "693_J2KR.dcm", 0),
    ("693_UNCI.dcm", "693_J2KI.dcm", 0),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", 0),
    ("emri_small.dcm", "emri_small_big_endian.dcm", 0),
    ("SC_rgb.dcm", "SC_rgb_rle.dcm", 0),
    ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", 12),  # lossy JPEG baseline, YBR -> RGB
    ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm", 0),
]


@pytest.mark.parametrize(("reference", "variant", "tolerance"), TWINS, ids=lambda v: str(v))
def test_compressed_twins_decode_to_the_same_values(
    reference: str, variant: str, tolerance: int
) -> None:
    expected = decode(dcmread(_path(reference))).pixels
    found = decode(dcmread(_path(variant))).pixels
    assert found.shape == expected.shape
    assert float(np.abs(found - expected).mean()) <= tolerance


def test_deflated_transfer_syntax_decodes() -> None:
    ds = dcmread(_path("image_dfl.dcm"))
    assert ds.file_meta.TransferSyntaxUID.name == "Deflated Explicit VR Little Endian"
    assert decode(ds).pixels.shape == (1, 512, 512, 1)


def test_ct_is_in_hounsfield_units() -> None:
    ds = dcmread(_path("CT_small.dcm"))
    hu = decode(ds).pixels[0, ..., 0]
    stored = ds.pixel_array.astype(np.float32)
    assert np.allclose(hu, stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert hu.min() < -500  # air in HU, not a stored value


def test_multiframe_is_split_into_frames() -> None:
    ds = dcmread(_path("SC_rgb_rle_2frame.dcm"))
    frames, _ = list_frames([ds])
    assert [f.ref.frame_number for f in frames] == [1, 2]
    assert decode(ds).pixels.shape == (2, ds.Rows, ds.Columns, 3)


def test_palette_colour_becomes_rgb() -> None:
    ds = dcmread(_path("OT-PAL-8-face.dcm"), force=True)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    assert decode(ds).pixels.shape == (1, ds.Rows, ds.Columns, 3)


def test_missing_pixel_data_is_a_reason() -> None:
    ds = dcmread(_path("rtplan.dcm"))
    frames, skipped = list_frames([ds])
    assert frames == [] and "no pixel data" in skipped[0]


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS:UserWarning")
def test_malformed_frame_count_is_a_reason() -> None:
    ds = dcmread(_path("badVR.dcm"))
    frames, skipped = list_frames([ds])
    assert frames == [] and "NumberOfFrames" in skipped[0] and "1A" in skipped[0]


def test_short_pixel_data_is_a_decode_error() -> None:
    ds = dcmread(_path("MR_small_padded.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(DecodeError, match="not decodable"):
        decode(ds)


@pytest.mark.parametrize(
    ("dtype", "slope", "intercept"),
    [
        (np.int16, 1.0, -1024.0),  # CT: the float32 path
        (np.uint16, 2.0, -32768.0),
        (np.int16, 0.1, -1024.0),  # not exact in float32: pydicom's float64 path
        (np.int32, 1.0, 0.0),  # beyond float32's exact integers: float64 path
        (np.uint16, 1.0, 0.5),
    ],
)
def test_rescale_equals_pydicoms_float64_rescale(
    dtype: type[np.integer], slope: float, intercept: float
) -> None:
    ds = dcmread(_path("CT_small.dcm"))
    info = np.iinfo(dtype)
    stored = np.linspace(info.min, info.max, 128 * 128).astype(dtype).reshape(128, 128)
    ds.BitsAllocated = ds.BitsStored = stored.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(info.min < 0)
    ds.PixelData = stored.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    expected = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    decoded = decode(ds).pixels[0, ..., 0]
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)
