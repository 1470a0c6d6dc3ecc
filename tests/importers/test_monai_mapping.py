"""Each MONAI transform and inferer maps onto the package keys, or is refused by config id."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import monai.transforms as mt
import pytest
from monai.inferers import SimpleInferer, SlidingWindowInferer

from inference.importers import ImportModelError
from inference.importers.monai_mapping import (
    MappedPipeline,
    map_inferer,
    map_postprocessing,
    map_preprocessing,
)

CONFIG = Path("configs/inference.json")


def steps(*transforms: Any) -> list[tuple[str, Any]]:
    return [(f"preprocessing::transforms::{i}", t) for i, t in enumerate(transforms)]


def orientation(codes: str = "RAS") -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own notice on `labels`
        return mt.Orientationd(keys="image", axcodes=codes)


def load_image() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no GPU decoder for pydicom here
        return mt.LoadImaged("image", reader="PydicomReader")


def pre(*transforms: Any) -> MappedPipeline:
    pipeline = MappedPipeline()
    map_preprocessing(steps(*transforms), "image", CONFIG, pipeline)
    return pipeline


def scale() -> Any:
    return mt.ScaleIntensityRanged("image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True)


def test_orientation_spacing_and_scale_range_map_onto_geometry_and_intensity() -> None:
    pipeline = pre(
        load_image(),
        mt.EnsureChannelFirstd("image"),
        orientation("LPS"),
        mt.Spacingd("image", pixdim=(0.8, 0.8, -1.0), mode="nearest"),
        scale(),
        mt.EnsureTyped("image"),
    )
    assert pipeline.geometry == {
        "orientation": "LPS",
        "spacing": [0.8, 0.8, "keep"],  # MONAI keeps an axis whose pixdim is <= 0
        "interpolation": 0,
    }
    assert pipeline.intensity == {
        "method": "scale_range",
        "a_min": -57.0,
        "a_max": 164.0,
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    }
    noted = " ".join(pipeline.notes)
    assert "::0 LoadImaged" in noted and "::5 EnsureTyped" in noted


def test_normalize_and_crop_foreground_map_with_margin() -> None:
    pipeline = pre(
        orientation(),
        mt.NormalizeIntensityd("image", nonzero=True),
        mt.CropForegroundd(("image", "label"), source_key="image", margin=3),
    )
    assert pipeline.intensity == {"method": "normalize", "nonzero": True}
    assert pipeline.geometry["crop_foreground"] is True
    assert (pipeline.geometry["crop_threshold"], pipeline.geometry["crop_margin"]) == (0.0, 3)
    assert pipeline.geometry["spacing"] == ["keep", "keep", "keep"]
    fixed = pre(orientation(), mt.NormalizeIntensityd("image", subtrahend=40.0, divisor=80.0))
    assert fixed.intensity == {"method": "normalize", "nonzero": False, "mean": 40.0, "std": 80.0}


def test_a_transform_on_another_key_is_noted_not_mapped() -> None:
    pipeline = pre(orientation(), scale(), mt.Spacingd("label", pixdim=(1, 1, 1)))
    assert "spacing" not in pipeline.geometry or pipeline.geometry["spacing"][0] == "keep"
    assert any("Spacingd: does not touch 'image'" in note for note in pipeline.notes)


@pytest.mark.parametrize(
    ("transforms", "match"),
    [
        (
            lambda: (orientation(), scale(), mt.RandFlipd("image", prob=0.5)),
            r"inference\.json: preprocessing::transforms::2: RandFlipd has no equivalent",
        ),
        (
            lambda: (mt.Spacingd("image", pixdim=(1, 1, 1)), orientation(), scale()),
            r"preprocessing::transforms::0: Spacingd before Orientationd",
        ),
        (
            lambda: (orientation(), mt.CropForegroundd("image", source_key="image"), scale()),
            r"preprocessing::transforms::1: CropForegroundd before the intensity transform",
        ),
        (
            lambda: (orientation(), scale(), scale()),
            r"preprocessing::transforms::2: a second intensity transform",
        ),
        (
            lambda: (scale(),),
            r"preprocessing: no Orientationd",
        ),
        (
            lambda: (orientation(),),
            r"preprocessing: no intensity transform",
        ),
        (
            lambda: (orientation(), mt.NormalizeIntensityd("image", subtrahend=1.0)),
            r"::1: NormalizeIntensityd with only one of subtrahend and divisor",
        ),
        (
            lambda: (
                orientation(),
                scale(),
                mt.CropForegroundd("image", source_key="image", select_fn=lambda x: x > 0.5),
            ),
            r"::2: CropForegroundd other than on the image with the default select_fn",
        ),
    ],
)
def test_preprocessing_that_does_not_map_names_the_transform_and_its_id(
    transforms: Any, match: str
) -> None:
    with pytest.raises(ImportModelError, match=match):
        pre(*transforms())


def test_sliding_window_inferer_maps_onto_the_window() -> None:
    pipeline = MappedPipeline()
    inferer = SlidingWindowInferer(
        roi_size=(96, 96, 64),
        sw_batch_size=2,
        overlap=0.5,
        mode="constant",
        padding_mode="replicate",
    )
    map_inferer(inferer, "inferer", CONFIG, pipeline)
    assert pipeline.window == {
        "patch": [96, 96, 64],
        "overlap": 0.5,
        "blending": "constant",
        "sigma_scale": 0.125,
        "batch": 2,
        "padding": "edge",
        "padding_value": 0.0,
    }


@pytest.mark.parametrize(
    ("inferer", "match"),
    [
        (SimpleInferer(), r"inferer: SimpleInferer: only SlidingWindowInferer"),
        (SlidingWindowInferer(roi_size=(96, 96, -1)), r"inferer::roi_size: \[96, 96, -1\]"),
        (
            SlidingWindowInferer(roi_size=(8, 8, 8), overlap=(0.25, 0.5, 0.5)),
            r"inferer::overlap: overlap \[0.25, 0.5, 0.5\] differs by axis",
        ),
        (
            SlidingWindowInferer(roi_size=(8, 8, 8), padding_mode="circular"),
            r"inferer: padding_mode 'circular'",
        ),
    ],
)
def test_an_inferer_that_does_not_map_is_refused(inferer: Any, match: str) -> None:
    with pytest.raises(ImportModelError, match=match):
        map_inferer(inferer, "inferer", CONFIG, MappedPipeline())


def post(*transforms: Any) -> MappedPipeline:
    pipeline = MappedPipeline()
    ids = [(f"postprocessing::transforms::{i}", t) for i, t in enumerate(transforms)]
    map_postprocessing(ids, "pred", CONFIG, pipeline)
    return pipeline


def test_postprocessing_maps_softmax_argmax_and_sigmoid_threshold() -> None:
    softmax = post(
        mt.Activationsd("pred", softmax=True),
        mt.AsDiscreted("pred", argmax=True),
        mt.KeepLargestConnectedComponentd("pred", applied_labels=[1]),
    )
    assert (softmax.activation, softmax.threshold) == ("softmax", None)
    assert softmax.interpolate == "probabilities"
    assert "KeepLargestConnectedComponentd: a cleanup step, not applied" in softmax.notes[0]
    assert post(mt.AsDiscreted("pred", argmax=True)).activation == "softmax"
    sigmoid = post(mt.Activationsd("pred", sigmoid=True), mt.AsDiscreted("pred", threshold=0.3))
    assert (sigmoid.activation, sigmoid.threshold) == ("sigmoid", 0.3)


def test_invertd_before_the_activation_takes_logits_back() -> None:
    invert = mt.Invertd("pred", transform=mt.Compose([orientation()]), orig_keys="image")
    after = post(mt.Activationsd("pred", softmax=True), invert, mt.AsDiscreted("pred", argmax=True))
    assert after.interpolate == "probabilities"
    before = post(
        invert, mt.Activationsd("pred", softmax=True), mt.AsDiscreted("pred", argmax=True)
    )
    assert before.interpolate == "logits"
    assert "Invertd: the node maps results back onto the source slices (logits" in before.notes[0]


@pytest.mark.parametrize(
    ("transforms", "match"),
    [
        (
            lambda: (mt.Activationsd("pred", softmax=True), mt.AsDiscreted("pred", threshold=0.5)),
            r"postprocessing::transforms::1: AsDiscreted argmax=False threshold=0.5 after "
            r"activation softmax",
        ),
        (
            lambda: (mt.Activationsd("pred", softmax=True), mt.FillHolesd("pred")),
            r"postprocessing::transforms::1: FillHolesd has no equivalent",
        ),
        (lambda: (mt.EnsureTyped("pred"),), r"postprocessing: neither softmax/argmax nor sigmoid"),
    ],
)
def test_postprocessing_that_does_not_map_is_refused(transforms: Any, match: str) -> None:
    with pytest.raises(ImportModelError, match=match):
        post(*transforms())
