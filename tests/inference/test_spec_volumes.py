"""The 3D package keys (CONTRACT-3d): the full example parses, nonsense is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference import ModelPackageError
from inference.spec import Blending, IntensityMethod, OriginKind, read_spec

WINDOWED_TOML = """
[model]
name = "ct-organs"
version = "1.0"
task = "segmentation"
intended_use = "Testing. Not for clinical use."

[input]
name = "image"
modalities = ["CT"]
dimensions = 3
size = [32, 32, 16]
channels = 1

[input.geometry]
orientation = "RAS"
transpose = [0, 1, 2]
spacing = [1.5, 1.5, "keep"]
interpolation = 1
max_slice_step_deviation = 0.1
resample_uneven = false
crop_foreground = false
crop_threshold = 0.0
crop_margin = 0

[input.window]
patch = [32, 32, 16]
overlap = 0.25
blending = "gaussian"
sigma_scale = 0.125
batch = 2
padding = "constant"
padding_value = 0.0
mirror_axes = []

[input.intensity]
method = "scale_range"
a_min = -1000.0
a_max = 1000.0
b_min = 0.0
b_max = 1.0
clip = true

[output]
name = "logits"
activation = "softmax"

[[output.labels]]
name = "body"
finding = { value = "123037004", scheme = "SCT", meaning = "Anatomical Structure" }
category = { value = "123037004", scheme = "SCT", meaning = "Anatomical Structure" }

[runtime]
max_batch = 4
networks = ["fold_0.onnx", "fold_1.onnx"]

[origin]
kind = "monai-bundle"
name = "spleen_ct_segmentation"
version = "0.5.0"
source = "bundle dir"
"""


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "model.toml").write_text(text)
    return folder


def test_contract_example_parses(tmp_path: Path) -> None:
    spec = read_spec(_write(tmp_path / "pkg", WINDOWED_TOML))
    assert spec.input.geometry is not None and spec.input.window is not None
    assert spec.input.geometry.orientation == "RAS"
    assert spec.input.geometry.spacing == (1.5, 1.5, "keep")
    assert spec.input.window.blending is Blending.GAUSSIAN
    assert spec.input.intensity.method is IntensityMethod.SCALE_RANGE
    assert spec.runtime.networks == ("fold_0.onnx", "fold_1.onnx")
    assert spec.origin is not None and spec.origin.kind is OriginKind.MONAI_BUNDLE


def test_window_without_geometry_runs_on_the_source_grid(tmp_path: Path) -> None:
    start = WINDOWED_TOML.index("[input.geometry]")
    end = WINDOWED_TOML.index("[input.window]")
    spec = read_spec(_write(tmp_path / "pkg", WINDOWED_TOML[:start] + WINDOWED_TOML[end:]))
    geometry = spec.input.volume_geometry
    assert geometry is not None
    assert (geometry.orientation, geometry.spacing) == ("source", ("keep", "keep", "keep"))


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('orientation = "RAS"', 'orientation = "RAX"', r"input\.geometry\.orientation.*'RAX'"),
        ('orientation = "RAS"', 'orientation = "RLS"', r"orientation.*names one patient axis"),
        ("transpose = [0, 1, 2]", "transpose = [0, 0, 2]", r"input\.geometry\.transpose.*perm"),
        ("spacing = [1.5, 1.5", "spacing = [0.0, 1.5", r"input\.geometry\.spacing\.0"),
        ('"keep"]', '"kept"]', r"input\.geometry\.spacing\.2"),
        ("interpolation = 1", "interpolation = 5", r"input\.geometry\.interpolation"),
        ("patch = [32, 32, 16]", "patch = [32, 0, 16]", r"input\.window\.patch\.1"),
        ("patch = [32, 32, 16]", "patch = [32, 32, 8]", r"input\.size .* input\.window\.patch"),
        ("overlap = 0.25", "overlap = 1.0", r"input\.window\.overlap"),
        ('blending = "gaussian"', 'blending = "cosine"', r"input\.window\.blending"),
        ('padding = "constant"', 'padding = "wrap"', r"input\.window\.padding"),
        ("mirror_axes = []", "mirror_axes = [0, 3]", r"input\.window\.mirror_axes\.1"),
        ("mirror_axes = []", "mirror_axes = [1, 1]", r"mirror_axes \[1, 1\] repeats"),
        ("batch = 2", "batch = 8", r"input\.window\.batch 8 exceeds runtime\.max_batch 4"),
        ("batch = 2", "batch = 2\nstride = 3", r"input\.window\.stride: Extra inputs"),
        ("clip = true", "clip = true\ncenter = 40.0", r"'scale_range' does not use \['center'\]"),
        ("a_max = 1000.0", "a_max = -1000.0", r"a_min and a_max are both -1000\.0"),
        ('"fold_1.onnx"]', '"../fold_1.onnx"]', r"runtime\.networks\.1"),
        ('"fold_1.onnx"]', '"fold_0.onnx"]', r"networks repeats \['fold_0\.onnx'\]"),
        ('kind = "monai-bundle"', 'kind = "zoo"', r"origin\.kind"),
        ("dimensions = 3", "dimensions = 2", r"size \[32, 32, 16\] must hold 2"),
    ],
)
def test_nonsense_is_an_error_naming_the_key(
    tmp_path: Path, old: str, new: str, match: str
) -> None:
    assert old in WINDOWED_TOML
    folder = _write(tmp_path / "pkg", WINDOWED_TOML.replace(old, new, 1))
    with pytest.raises(ModelPackageError, match=match):
        read_spec(folder)


@pytest.mark.parametrize(
    ("intensity", "match"),
    [
        ({"method": "normalize", "mean": 1.0}, "mean and std together"),
        ({"method": "normalize", "mean": 1.0, "std": 0.0}, "std must be positive"),
        ({"method": "ct_normalization", "lower": 1.0, "upper": 2.0}, r"needs \['mean', 'std'\]"),
        (
            {"method": "ct_normalization", "lower": 3.0, "upper": 2.0, "mean": 0.0, "std": 1.0},
            "lower 3.0 must be below upper 2.0",
        ),
        ({"method": "channel_mean_std", "mean": [0.4], "std": [0.2]}, "exactly one pair"),
        ({"method": "window", "center": 40.0, "width": 400.0, "nonzero": True}, "'nonzero'"),
    ],
)
def test_intensity_methods_check_their_keys(
    tmp_path: Path, intensity: dict[str, object], match: str
) -> None:
    lines = [f"{k} = {_toml(v)}" for k, v in intensity.items()]
    start = WINDOWED_TOML.index("[input.intensity]")
    end = WINDOWED_TOML.index("[output]")
    text = WINDOWED_TOML[:start] + "[input.intensity]\n" + "\n".join(lines) + "\n\n"
    with pytest.raises(ModelPackageError, match=match):
        read_spec(_write(tmp_path / "pkg", text + WINDOWED_TOML[end:]))


def test_channel_stats_must_match_channels(tmp_path: Path) -> None:
    start = WINDOWED_TOML.index("[input.intensity]")
    end = WINDOWED_TOML.index("[output]")
    intensity = (
        '[input.intensity]\nmethod = "channel_mean_std"\nmean = [0.485, 0.456, 0.406]\n'
        "std = [0.229, 0.224, 0.225]\na_min = -1000.0\na_max = 1000.0\n\n"
    )
    with pytest.raises(ModelPackageError, match=r"one per channel \(1\)"):
        read_spec(_write(tmp_path / "pkg", WINDOWED_TOML[:start] + intensity + WINDOWED_TOML[end:]))


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
