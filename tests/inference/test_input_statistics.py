"""What the network saw, summarised per series: intensity quantiles and foreground
fraction of the preprocessed input, on every path of `Model.predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import INPUT_STATISTICS, load_model
from inference.input_statistics import SAMPLE_PER_INPUT, InputSample, _subsample
from tests.inference.dicom_factory import ct_series
from tests.inference.graphs import segmenter_package
from tests.inference.test_volumes import GEOMETRY, SCALE_RANGE, WINDOW
from tests.inference.volume_data import package_toml, real_ct_stack, write_package


def phantom(offset_hu: float = 0.0) -> np.ndarray:
    """Six 64 x 64 slices: air, a 32 x 40 body of 40 HU (31.25%), bone of 800 HU in it."""
    hu = np.full((6, 64, 64), -1000.0)
    hu[:, 16:48, 12:52] = 40.0 + offset_hu
    hu[:, 28:36, 28:36] = 800.0 + offset_hu
    return hu


def statistics_of(arrays: list[np.ndarray]) -> dict[str, float]:
    sample = InputSample()
    for array in arrays:
        sample.add(array)
    return sample.statistics()


def test_quantiles_and_foreground_of_a_known_image() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((1, 256, 256), np.float32)
    image[0, 64:192, :] = rng.uniform(0.5, 1.0, (128, 256))  # half foreground
    stats = statistics_of([image])
    full = np.percentile(image, [5, 50, 95])
    assert list(stats) == list(INPUT_STATISTICS)
    assert stats["foreground_fraction"] == pytest.approx(0.5, abs=0.02)
    assert stats["intensity_p5"] == pytest.approx(full[0], abs=0.01)
    assert stats["intensity_p95"] == pytest.approx(full[2], abs=0.02)
    # Background is the lowest value whatever the normalisation: an offset and a
    # scale move the quantiles and leave the foreground fraction as it was.
    moved = statistics_of([image * 3.0 - 1.0])
    assert moved["foreground_fraction"] == stats["foreground_fraction"]
    assert moved["intensity_p95"] == pytest.approx(stats["intensity_p95"] * 3.0 - 1.0, rel=1e-5)


def test_the_sample_is_small_covers_every_column_and_copies_no_input() -> None:
    columns = np.tile(np.arange(512, dtype=np.float32), (8, 512, 1))  # value = column
    sample = _subsample(columns, SAMPLE_PER_INPUT)
    assert sample.size <= SAMPLE_PER_INPUT + 1
    assert len(np.unique(sample)) == 512  # a step coprime with the row: no column missed
    transposed = _subsample(columns.transpose(2, 1, 0), SAMPLE_PER_INPUT)  # a view, not copied
    assert transposed.size <= SAMPLE_PER_INPUT + 1
    assert statistics_of([]) == {}
    assert statistics_of([np.full((4, 4), np.nan, np.float32)]) == {}


@pytest.mark.parametrize("dims", [2, 3], ids=["frames", "volume"])
def test_predict_reports_what_the_network_saw(tmp_path: Path, dims: int) -> None:
    size = (64, 64) if dims == 2 else (6, 64, 64)
    package = segmenter_package(tmp_path / "seg", dims=dims, size=size)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        plain = model.predict(ct_series(phantom())).input_statistics
        brighter = model.predict(ct_series(phantom(offset_hu=100.0))).input_statistics
    # Window 500 +/- 1000 HU: air 0, body (40 + 500) / 2000 = 0.27, bone 0.65.
    assert plain["intensity_p5"] == pytest.approx(0.0, abs=1e-3)
    assert plain["intensity_p50"] == pytest.approx(0.0, abs=1e-3)
    assert plain["intensity_p95"] == pytest.approx(0.27, abs=0.01)
    assert plain["foreground_fraction"] == pytest.approx(0.3125, abs=0.02)
    assert brighter["intensity_p95"] == pytest.approx(0.32, abs=0.01)  # +100 HU = +0.05
    assert brighter["foreground_fraction"] == pytest.approx(plain["foreground_fraction"])


def test_windowed_3d_packages_report_their_resampled_volume(tmp_path: Path) -> None:
    toml_text = package_toml(geometry=GEOMETRY, window=WINDOW, intensity=SCALE_RANGE)
    package = write_package(tmp_path / "pkg", toml_text)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        stats = model.predict(real_ct_stack(8, step_mm=2.0)).input_statistics
    assert set(stats) == set(INPUT_STATISTICS)
    # scale_range -1000..1000 HU to 0..1: real CT, air below tissue below bone.
    assert 0.0 <= stats["intensity_p5"] < stats["intensity_p50"] < stats["intensity_p95"] <= 1.0
    assert 0.0 < stats["foreground_fraction"] < 1.0


def test_a_subsample_owns_its_values_and_is_the_same_for_any_memory_layout() -> None:
    """The series' sample must not keep every model input alive through a view, and a
    strided view of contiguous input picks the same values as ``flat`` on any other."""
    frames = np.random.default_rng(0).random((3, 512, 512), dtype=np.float32)
    contiguous = _subsample(frames, SAMPLE_PER_INPUT)
    strided = frames[:, ::2]
    assert contiguous.base is None and contiguous.size >= 0.9 * SAMPLE_PER_INPUT
    assert np.array_equal(
        _subsample(strided, SAMPLE_PER_INPUT), _subsample(strided.copy(), SAMPLE_PER_INPUT)
    )
