"""A real CT series through the node's whole path to a SEG, against fixed pixel data.

The series is pydicom's real 512 x 512 CT slice made into a 24-slice volume
(``tests/inference/volume_data.py``), four slices blanked to air so that frames
without any segment exist; the model thresholds bone at 150.5 HU. The SEG's pixel
data must not change when the path is made faster: it is compared with a digest
taken before the optimisation of issue 18, and with highdicom's own plain path
on the same mask computed here with numpy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset

from inference import Segmentation, load_model
from sr_writer import build_results
from sr_writer.content import copied_names_accepted
from tests.inference.graphs import segmenter_package
from tests.inference.volume_data import real_ct_stack
from tests.sr_writer.conftest import Validator
from tests.sr_writer.plain_seg import plain_seg
from tests.sr_writer.reading import read_report, region_reference, saved, seg_frames

SLICES = 24
BLANK = (0, 5, 11, 23)  # instance numbers - 1 of the slices set to air
LEVEL_HU = 150.5
PIXEL_DATA_SHA256 = "142bc67a128629aa5c6c8e369d476c72d7cf76c08f792b7ecff12d8f3f9c1173"
"""SHA-256 of the SEG's Pixel Data as written before issue 18's optimisation."""


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    datasets = real_ct_stack(SLICES, template="693_UNCI.dcm", step_mm=1.0)
    for ds in datasets:
        if ds.InstanceNumber - 1 in BLANK:
            ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype=np.int16).tobytes()
    return datasets


@pytest.fixture(scope="module")
def results(series: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    package = segmenter_package(
        tmp_path_factory.mktemp("package"),
        size=(512, 512),
        center=0.0,
        width=2000.0,
        level_hu=LEVEL_HU,
    )
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(series)
    assert isinstance(prediction, Segmentation)
    return build_results(prediction, series)


def _plain_seg(series: list[Dataset]) -> Dataset:
    """highdicom's Segmentation on the numpy threshold of the same HU, slices sorted."""
    ordered = sorted(series, key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ordered]
    )
    with copied_names_accepted():  # the source's single-component patient name
        return plain_seg(
            ordered,
            hu > LEVEL_HU,
            label="dense",
            manufacturer="test",
            model_name="plain",
            version="1",
        )


def test_seg_pixel_data_is_unchanged_by_the_optimisation(results: list[Dataset]) -> None:
    _, seg = results
    assert int(seg.NumberOfFrames) == SLICES - len(BLANK)
    assert hashlib.sha256(seg.PixelData).hexdigest() == PIXEL_DATA_SHA256


def test_seg_frames_equal_highdicom_plain_path(
    series: list[Dataset], results: list[Dataset]
) -> None:
    node = seg_frames(results[1])
    plain = seg_frames(_plain_seg(series))
    blank = {str(ds.SOPInstanceUID) for ds in series if ds.InstanceNumber - 1 in BLANK}
    assert not blank & {uid for uid, _ in node}, "a frame without segment was written"
    assert node == plain


def test_seg_and_report_are_valid_and_resolve_their_frames(
    series: list[Dataset], results: list[Dataset], dciodvfy: Validator, tmp_path: Path
) -> None:
    report, seg = results
    dciodvfy(seg, "seg")
    dciodvfy(report, "sr")
    read = hd.seg.segread(saved(seg, tmp_path, "seg"))
    written = [str(ds.SOPInstanceUID) for ds in series if ds.InstanceNumber - 1 not in BLANK]
    pixels = read.get_pixels_by_source_instance(written, combine_segments=False)
    assert pixels.shape[0] == len(written) and all(frame.any() for frame in pixels)
    content = read_report(report, tmp_path)
    (volumetric,) = content.get_volumetric_roi_measurement_groups()
    assert volumetric.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    (planar,) = content.get_planar_roi_measurement_groups()
    assert region_reference(planar)[0] in written
