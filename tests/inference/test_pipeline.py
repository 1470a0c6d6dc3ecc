"""The whole path from DICOM instances to a Prediction, with exact test graphs.

The graphs threshold, pass through or output fixed boxes, so that the expected
masks, heatmaps and boxes on the source images are known pixel for pixel.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from inference import (
    Classification,
    Detection,
    Segmentation,
    UnsupportedSeriesError,
    load_model,
)
from tests.inference.dicom_factory import (
    CORONAL,
    SAGITTAL,
    ct_series,
    ct_slice,
    radiograph_dataset,
)
from tests.inference.graphs import (
    CLASSIFIER_TOML,
    DETECTOR_TOML,
    bright_classifier_graph,
    fixed_box_graph,
    segmenter_package,
    write_package,
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _ball(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float
) -> np.ndarray:
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    return np.asarray(
        ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius**2
    )


@pytest.mark.parametrize("orientation", [SAGITTAL, CORONAL], ids=["sagittal", "coronal"])
def test_3d_masks_land_on_the_right_slices(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    truth = _ball((12, 40, 48), (7.0, 18.0, 30.0), 5.5)
    hu = np.where(truth, 800.0, 20.0)
    series = ct_series(hu, spacing=3.0, orientation=orientation)
    random.Random(3).shuffle(series)
    package = segmenter_package(tmp_path / "seg3d", dims=3, size=(16, 32, 32), resize="letterbox")
    with load_model(package, backend="onnxruntime") as model:
        prediction = model.predict(series)
    assert isinstance(prediction, Segmentation)
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    # Frames come back in volume order: the k-th frame is the k-th slice along the normal.
    order = [by_uid[f.sop_instance_uid] for f in prediction.frames]
    assert [int(ds.InstanceNumber) for ds in order] == list(range(12, 0, -1))
    assert prediction.masks.shape == (12, 40, 48, 1) and prediction.masks.dtype == np.bool_
    assert prediction.masks.flags.c_contiguous
    assert _dice(prediction.masks[..., 0], truth) > 0.85
    assert prediction.slice_spacing_mm == pytest.approx(3.0)
    assert prediction.pixel_spacing_mm == pytest.approx((0.7, 0.7))
    assert prediction.voxel_volume_mm3 == pytest.approx(0.7 * 0.7 * 3.0)


def test_3d_model_skips_irregular_stack(tmp_path: Path) -> None:
    uid = generate_uid()
    series = [
        ct_slice(np.zeros((8, 8)), position=(0, 0, z), series_uid=uid) for z in (0, 2, 4, 9, 11)
    ]
    package = segmenter_package(tmp_path / "seg3d", dims=3, size=(4, 8, 8))
    with load_model(package) as model, pytest.raises(UnsupportedSeriesError, match="not regular"):
        model.predict(series)


def test_2d_segmentation_sorts_slices_and_keeps_source_resolution(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-200, 900, size=(5, 70, 90))
    series = ct_series(hu)
    random.Random(2).shuffle(series)
    package = segmenter_package(tmp_path / "seg2d", size=(64, 64), resize="letterbox")
    with load_model(package, backend="onnxruntime") as model:
        prediction = model.predict(series, keep_probabilities=True)
    assert isinstance(prediction, Segmentation)
    assert prediction.masks.shape == (5, 70, 90, 1)
    assert prediction.probabilities is not None
    assert prediction.probabilities.shape == prediction.masks.shape
    positions = []
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    for k, ref in enumerate(prediction.frames):
        ds = by_uid[ref.sop_instance_uid]
        positions.append(float(ds.ImagePositionPatient[2]))
        stored_hu = ds.pixel_array.astype(float) - 1024
        assert _dice(prediction.masks[k, ..., 0], stored_hu >= 300) > 0.6  # noise, resampled
    assert positions == sorted(positions)
    assert prediction.slice_spacing_mm == pytest.approx(2.0)


def test_other_modality_and_stacks_are_reported(tmp_path: Path) -> None:
    uid = generate_uid()
    series = ct_series(np.full((4, 16, 16), 500.0), series_uid=uid)
    series += ct_series(np.full((2, 16, 16), 500.0), series_uid=uid, orientation=CORONAL)
    stray = radiograph_dataset(np.zeros((16, 16)))
    stray.SeriesInstanceUID = uid
    package = segmenter_package(tmp_path / "seg2d", size=(16, 16))
    with load_model(package) as model:
        prediction = model.predict([stray, *series])
    assert isinstance(prediction, Segmentation)
    assert len(prediction.frames) == 4
    assert any("Modality 'CR'" in reason for reason in prediction.skipped)
    assert any("a segmentation covers one stack" in reason for reason in prediction.skipped)


def test_nothing_to_run_raises_with_the_reason(tmp_path: Path) -> None:
    package = segmenter_package(tmp_path / "seg2d", size=(16, 16))
    with load_model(package) as model:
        with pytest.raises(UnsupportedSeriesError, match="Modality 'CR' not in") as info:
            model.predict([radiograph_dataset(np.zeros((16, 16)))])
        assert info.value.reason
        with pytest.raises(UnsupportedSeriesError, match="no instances"):
            model.predict([])


def test_undecodable_instance_is_skipped_not_fatal(tmp_path: Path) -> None:
    series = ct_series(np.full((3, 16, 16), 500.0))
    series[1].PixelData = series[1].PixelData[:10]
    package = segmenter_package(tmp_path / "seg2d", size=(16, 16))
    with load_model(package) as model:
        prediction = model.predict(series)
    assert isinstance(prediction, Segmentation)
    assert len(prediction.frames) == 2
    assert prediction.masks is not None and prediction.masks.shape[0] == 2
    assert prediction.masks.flags.c_contiguous  # trimmed, still what highdicom wants
    assert any("not decodable" in reason for reason in prediction.skipped)
    assert prediction.slice_spacing_mm is None  # a stack with a hole has no single spacing


def _bright_spot(rows: int, cols: int, centre: tuple[int, int]) -> np.ndarray:
    image = np.full((rows, cols), 500.0)
    r, c = np.mgrid[0:rows, 0:cols]
    image[(r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= 36] = 3000.0
    return image


@pytest.mark.parametrize("monochrome1", [False, True], ids=["monochrome2", "monochrome1"])
def test_classification_heatmap_on_source_grid(tmp_path: Path, monochrome1: bool) -> None:
    package = write_package(tmp_path / "cls", CLASSIFIER_TOML)
    bright_classifier_graph(package / "model.onnx")
    ds = radiograph_dataset(_bright_spot(90, 160, (30, 120)), monochrome1=monochrome1)
    with load_model(package, backend="onnxruntime") as model:
        prediction = model.predict([ds])
    assert isinstance(prediction, Classification)
    (score,) = prediction.scores
    assert score.positive == (score.probability >= 0.5)
    (heatmap,) = prediction.heatmaps if score.positive else (None,)
    assert heatmap is not None, "the spot lifts the mean: the label must be positive"
    assert heatmap.values.shape == (90, 160) and heatmap.values.dtype == np.float32
    assert heatmap.values.min() >= 0.0 and heatmap.values.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(heatmap.values), heatmap.values.shape)
    assert abs(peak[0] - 30) <= 3 and abs(peak[1] - 120) <= 3
    assert heatmap.frame.sop_instance_uid == ds.SOPInstanceUID


def test_negative_classification_has_no_heatmap(tmp_path: Path) -> None:
    package = write_package(tmp_path / "cls", CLASSIFIER_TOML)
    bright_classifier_graph(package / "model.onnx", bias=-10.0)
    with load_model(package) as model:
        prediction = model.predict([radiograph_dataset(_bright_spot(64, 64, (32, 32)))])
    assert isinstance(prediction, Classification)
    assert not prediction.scores[0].positive and prediction.heatmaps == ()


def test_detection_boxes_after_nms_in_source_pixels(tmp_path: Path) -> None:
    package = write_package(tmp_path / "det", DETECTOR_TOML)
    boxes = np.asarray(
        [
            [30.0, 10.0, 50.0, 30.0],  # best
            [31.0, 11.0, 51.0, 31.0],  # overlaps the best: suppressed
            [60.0, 60.0, 70.0, 90.0],  # separate
            [0.0, 0.0, 5.0, 5.0],  # below threshold
            [40.0, 40.0, 40.0, 60.0],  # empty box
        ]
    )
    logits = np.asarray([[4.0], [3.0], [2.0], [-3.0], [5.0]])
    fixed_box_graph(package / "model.onnx", boxes, logits)
    series = [radiograph_dataset(np.zeros((200, 400))), radiograph_dataset(np.zeros((200, 400)))]
    with load_model(package) as model:
        prediction = model.predict(series)
    assert isinstance(prediction, Detection)
    assert len(prediction.boxes) == 4  # two per image
    # 400 columns fill 100 model pixels (scale 4); 200 rows fill 50, centred at row 25.
    first = [b for b in prediction.boxes if b.frame.sop_instance_uid == series[0].SOPInstanceUID]
    assert first[0].bounds == pytest.approx((20.0, 40.0, 100.0, 120.0))
    assert first[0].score == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert first[1].bounds == pytest.approx((140.0, 240.0, 180.0, 360.0))
    assert [b.score for b in prediction.boxes] == sorted(
        (b.score for b in prediction.boxes), reverse=True
    )


def test_series_where_nothing_decodes_is_unsupported(tmp_path: Path) -> None:
    series = ct_series(np.full((2, 16, 16), 500.0))
    for ds in series:
        ds.PixelData = ds.PixelData[:10]
    package = segmenter_package(tmp_path / "seg2d", size=(16, 16))
    with load_model(package) as model, pytest.raises(UnsupportedSeriesError, match="not decodable"):
        model.predict(series)
