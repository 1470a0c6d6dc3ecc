"""Small ONNX graphs and package folders for tests, built with `onnx.helper`.

Each graph computes something simple and exact, so that a test can predict the
pipeline's output pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]

_CT_WINDOW_HEAD = """
[model]
name = "{name}"
version = "0.1"
task = "{task}"
intended_use = "tests"

[input]
name = "image"
modalities = ["CT"]
dimensions = {dims}
size = {size}
resize = "{resize}"
max_spacing_deviation = 0.05

[input.intensity]
method = "window"
center = {center}
width = {width}

[output]
name = "logits"
activation = "sigmoid"
"""

_DENSE_LABEL = """
[[output.labels]]
name = "dense"
finding = { value = "272673000", scheme = "SCT", meaning = "Bone structure" }
category = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }

[runtime]
max_batch = 4
precision = "fp32"
"""


def ct_window_head(
    name: str, task: str, *, dims: int, size: list[int], resize: str, center: float, width: float
) -> str:
    """The model.toml of a CT model on an HU window up to its labels: [model], [input]
    and [output] (``logits``, sigmoid); the caller adds ``[[output.labels]]``."""
    return _CT_WINDOW_HEAD.format(
        name=name, task=task, dims=dims, size=size, resize=resize, center=center, width=width
    )


CLASSIFIER_TOML = """
[model]
name = "bright-classifier"
version = "0.1"
task = "classification"
intended_use = "tests"

[input]
name = "image"
modalities = ["CR"]
size = [64, 64]
resize = "letterbox"

[input.intensity]
method = "minmax"

[output]
name = "logits"
activation = "sigmoid"

[output.cam]
feature_output = "features"
weight = "head.weight"

[[output.labels]]
name = "bright"
finding = { value = "27925004", scheme = "SCT", meaning = "Nodule" }
category = { value = "404684003", scheme = "SCT", meaning = "Clinical finding" }
"""

DETECTOR_TOML = """
[model]
name = "fixed-boxes"
version = "0.1"
task = "detection"
intended_use = "tests"

[input]
name = "image"
modalities = ["CR"]
size = [100, 100]
resize = "letterbox"

[input.intensity]
method = "minmax"

[output]
boxes = "boxes"
scores = "scores"
iou_threshold = 0.5

[[output.labels]]
name = "nodule"
threshold = 0.5
finding = { value = "27925004", scheme = "SCT", meaning = "Nodule" }
category = { value = "404684003", scheme = "SCT", meaning = "Clinical finding" }
"""


def _input(shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def threshold_graph(path: Path, spatial: list[int], level: float, channels: int = 1) -> None:
    """logits = (image - level) * 200: a sigmoid above 0.5 exactly where image > level."""
    shape: list[int | str] = ["batch", 1, *spatial]
    nodes = [
        helper.make_node("Sub", ["image", "level"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "gain"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(level, dtype=np.float32), "level"),
        numpy_helper.from_array(
            np.full((1, channels, *[1] * len(spatial)), 200.0, np.float32), "gain"
        ),
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", channels, *spatial])
    _save(helper.make_graph(nodes, "threshold", [_input(shape)], [out], inits), path)


def bright_classifier_graph(path: Path, bias: float = -0.05, weight: float = 40.0) -> None:
    """features = image; logits = head(GAP(features)): CAM is the image itself."""
    nodes = [
        helper.make_node("Identity", ["image"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([[weight]], np.float32), "head.weight"),
        numpy_helper.from_array(np.asarray([bias], np.float32), "head.bias"),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1, 64, 64]),
    ]
    _save(helper.make_graph(nodes, "cam", [_input(["batch", 1, 64, 64])], outputs, inits), path)


def fixed_box_graph(path: Path, boxes: np.ndarray, logits: np.ndarray) -> None:
    """Outputs the same boxes (K, 4) and logits (K, L) for every image of the batch."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape3"], ["per_image"]),
        helper.make_node("Mul", ["per_image", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "box_values"], ["boxes"]),
        helper.make_node("Add", ["nothing", "score_values"], ["scores"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([-1, 1, 1], np.int64), "shape3"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(boxes[np.newaxis].astype(np.float32), "box_values"),
        numpy_helper.from_array(logits[np.newaxis].astype(np.float32), "score_values"),
    ]
    k, labels = logits.shape
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", k, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", k, labels]),
    ]
    _save(helper.make_graph(nodes, "boxes", [_input(["batch", 1, 100, 100])], outputs, inits), path)


def write_package(folder: Path, toml_text: str) -> Path:
    """Create the folder and its model.toml; the caller writes model.onnx into it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(toml_text.lstrip(), encoding="utf-8")
    return folder


def segmenter_package(
    folder: Path,
    *,
    dims: int = 2,
    size: tuple[int, ...] = (64, 64),
    resize: str = "stretch",
    center: float = 500.0,
    width: float = 2000.0,
    level_hu: float = 300.0,
) -> Path:
    """A package whose model marks voxels above ``level_hu`` (through the HU window)."""
    head = ct_window_head(
        f"threshold-{dims}d",
        "segmentation",
        dims=dims,
        size=list(size),
        resize=resize,
        center=center,
        width=width,
    )
    write_package(folder, head + _DENSE_LABEL)
    level = (level_hu - (center - width / 2)) / width
    threshold_graph(folder / "model.onnx", list(size), level)
    return folder


def linear_classifier_graph(
    path: Path, size: list[int], biases: list[float], weights: list[float] | None = None
) -> None:
    """logits = mean(image) * weights + biases, one per label: a classifier whose answer
    a test chooses (``weights`` None: the same ``biases`` for every image)."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape2"], ["per_image"]),
        helper.make_node("Mul", ["per_image", "weights"], ["weighted"]),
        helper.make_node("Add", ["weighted", "biases"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([-1, 1], np.int64), "shape2"),
        numpy_helper.from_array(
            np.asarray([weights or [0.0] * len(biases)], np.float32), "weights"
        ),
        numpy_helper.from_array(np.asarray([biases], np.float32), "biases"),
    ]
    shape: list[int | str] = ["batch", 1, *size]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(biases)])
    _save(helper.make_graph(nodes, "fixed", [_input(shape)], [out], inits), path)
