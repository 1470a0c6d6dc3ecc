"""Fitting to the model grid and back, and intensity handling."""

from __future__ import annotations

import numpy as np
import pytest

from inference.preprocessing.intensity import normalize
from inference.preprocessing.resize import box_to_source, plan_fit, to_model, to_source
from inference.spec import IntensityMethod, IntensitySpec, ResizeMode


@pytest.mark.parametrize("mode", [ResizeMode.STRETCH, ResizeMode.LETTERBOX])
@pytest.mark.parametrize("source", [(90, 120), (200, 60), (64, 64)])
def test_smooth_image_survives_the_round_trip(mode: ResizeMode, source: tuple[int, int]) -> None:
    rows, cols = np.mgrid[0 : source[0], 0 : source[1]].astype(np.float32)
    image = np.sin(rows / 17.0) + np.cos(cols / 23.0)
    fit = plan_fit(source, (128, 128), mode)
    back = to_source(to_model(image, fit), fit)
    assert back.shape == source
    assert float(np.abs(back - image).max()) < 0.05


def test_letterbox_keeps_aspect_and_centres() -> None:
    fit = plan_fit((100, 200), (64, 64), ResizeMode.LETTERBOX)
    assert fit.content == (32, 64) and fit.offset == (16, 0)
    model = to_model(np.ones((100, 200), np.float32), fit)
    assert (
        model[:16].max() == 0 and model[48:].max() == 0 and model[16:48].min() == pytest.approx(1.0)
    )


def test_mask_edges_land_on_source_pixels() -> None:
    source = np.zeros((300, 200), np.float32)
    source[100:180, 40:120] = 1.0
    fit = plan_fit(source.shape, (128, 128), ResizeMode.LETTERBOX)
    back = to_source(to_model(source, fit), fit) >= 0.5
    truth = source > 0
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert dice > 0.97


def test_shrinking_averages_instead_of_sampling() -> None:
    stripes = np.tile(np.asarray([0.0, 1.0], np.float32), 200)[np.newaxis]
    shrunk = to_model(stripes, plan_fit((1, 400), (1, 37), ResizeMode.STRETCH))
    assert shrunk[0, 1:-1] == pytest.approx(0.5, abs=0.05)


def test_box_maps_back_through_the_letterbox() -> None:
    fit = plan_fit((100, 200), (64, 64), ResizeMode.LETTERBOX)
    # Content rows 16..48 hold source rows 0..100; columns 0..64 hold 0..200.
    assert box_to_source((16.0, 0.0, 48.0, 64.0), fit) == pytest.approx((0.0, 0.0, 100.0, 200.0))
    assert box_to_source((32.0, 16.0, 40.0, 32.0), fit) == pytest.approx((50.0, 50.0, 75.0, 100.0))
    assert box_to_source((0.0, -5.0, 10.0, 70.0), fit) == pytest.approx((0.0, 0.0, 0.0, 200.0))


def test_volume_resizes_along_slices_too() -> None:
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 10, 10), np.float32)
    fit = plan_fit((4, 10, 10), (8, 16, 16), ResizeMode.LETTERBOX)
    model = to_model(volume, fit)
    assert model.shape == (8, 16, 16)
    assert np.all(np.diff(model[:, 8, 8]) >= 0)
    # Resampling up and back blurs the end slices by a fraction of one step.
    assert to_source(model, fit) == pytest.approx(volume, abs=0.25)


def test_bad_fit_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot fit source shape"):
        plan_fit((10, 10), (4, 4, 4), ResizeMode.STRETCH)


def test_ct_window_in_hounsfield_units() -> None:
    hu = np.asarray([[-2000.0, -500.0, 500.0, 1500.0, 3000.0]], np.float32)[..., None]
    spec = IntensitySpec(method=IntensityMethod.WINDOW, center=500.0, width=2000.0)
    assert normalize(hu, spec)[0, :, 0] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_monochrome1_is_inverted() -> None:
    values = np.asarray([[0.0, 100.0]], np.float32)[..., None]
    spec = IntensitySpec(method=IntensityMethod.MINMAX)
    assert normalize(values, spec, monochrome1=True)[0, :, 0] == pytest.approx([1.0, 0.0])
    z = IntensitySpec(method=IntensityMethod.ZSCORE)
    assert normalize(values, z, monochrome1=True)[0, :, 0] == pytest.approx([1.0, -1.0])


def test_voi_uses_the_dataset_window_and_falls_back_to_minmax() -> None:
    values = np.asarray([[0.0, 50.0, 100.0]], np.float32)[..., None]
    spec = IntensitySpec(method=IntensityMethod.VOI)
    assert normalize(values, spec, dataset_window=(50.0, 50.0))[0, :, 0] == pytest.approx(
        [0, 0.5, 1]
    )
    assert normalize(values, spec)[0, :, 0] == pytest.approx([0, 0.5, 1])


def test_percentile_clips_outliers() -> None:
    values = np.concatenate([np.linspace(0, 1, 1000), [1e6]]).astype(np.float32)[None, :, None]
    spec = IntensitySpec(method=IntensityMethod.PERCENTILE, low_percentile=1, high_percentile=99)
    out = normalize(values, spec)
    assert out.max() == 1.0 and np.median(out) == pytest.approx(0.5, abs=0.02)
