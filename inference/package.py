"""A model package checked against its graph, without starting a backend.

`validate_package` is what ``dicom-node check-config`` and `load_model` call: it
reads ``model.toml`` and compares it with ``model.onnx`` (input and output names,
ranks, element types, label count against output width, the CAM head), so that a
broken package fails when the node starts, naming the file and the field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from inference.errors import ModelPackageError
from inference.model_card import ModelCard, read_card
from inference.prediction import ModelIdentity
from inference.spec import SPEC_FILE, Activation, ModelSpec, Task, read_spec

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
_FLOAT_TYPES: dict[int, str] = {
    int(onnx.TensorProto.FLOAT): "float32",
    int(onnx.TensorProto.FLOAT16): "float16",
}

Dim = int | None  # None: dynamic (symbolic or unknown)


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, element type and shape (None where dynamic)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class ModelPackage:
    """A checked package: where it is, what it says, and what its graph holds."""

    path: Path
    spec: ModelSpec
    onnx_path: Path | None
    torch_path: Path | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    networks: tuple[Path, ...] = ()
    """Every ONNX network of the package (``runtime.networks``); several: an ensemble."""
    card: ModelCard | None = None
    """The package's model card (``model_card.json``), where it has one."""

    @property
    def identity(self) -> ModelIdentity:
        """The identity written into every result: the spec's, naming the model card
        when the card describes this very name and version."""
        identity = self.spec.identity
        info = self.spec.model
        if self.card is None or not self.card.applies_to(info.name, info.version):
            return identity
        return replace(identity, model_card=f"{self.card.model} {self.card.version}")

    @property
    def card_warning(self) -> str | None:
        """Why the package's model card does not apply to it; ``None`` when it does or
        the package has no card."""
        info = self.spec.model
        return None if self.card is None else self.card.mismatch(info.name, info.version)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names in graph order: the order a torch module must return them.

        Without a graph, the order ``model.toml`` declares them in: the main output
        (or boxes, scores), then the CAM feature map.
        """
        if self.outputs:
            return tuple(t.name for t in self.outputs)
        out = self.spec.output
        names = [out.boxes, out.scores] if self.spec.model.task is Task.DETECTION else [out.name]
        if out.cam is not None:
            names.append(out.cam.feature_output)
        return tuple(names)

    def cam_weight(self) -> npt.NDArray[np.float32]:
        """Return the classifier head weights (labels, channels) that CAM multiplies.

        Raises
        ------
        ModelPackageError
            When the package declares no CAM or the initializer is missing.
        """
        cam = self.spec.output.cam
        if cam is None or self.onnx_path is None:
            raise ModelPackageError(self.path / SPEC_FILE, "output.cam", "no CAM declared")
        graph = onnx.load(str(self.onnx_path)).graph
        return _initializer(graph, cam.weight, self.onnx_path)


def validate_package(path: Path | str) -> ModelPackage:
    """Check a model package against its graph without loading a backend.

    Parameters
    ----------
    path : pathlib.Path or str
        The package folder.

    Returns
    -------
    ModelPackage
        The parsed spec with the graph's input and output descriptions.

    Raises
    ------
    ModelPackageError
        When ``model.toml`` or ``model_card.json`` is missing or wrong (the card may
        be absent), no network file is present, the ONNX
        file does not load or pass the ONNX checker, or the spec disagrees with the
        graph (names, ranks, element types, label count, CAM head shape).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelPackageError(folder, "-", "model package folder not found")
    spec = read_spec(folder)
    card = read_card(folder)
    _check_license(folder, spec)
    onnx_path = folder / spec.runtime.networks[0]
    ts_path = folder / spec.runtime.torch_file
    has_ts = ts_path.is_file()
    if not onnx_path.is_file():
        if not has_ts:
            raise ModelPackageError(
                onnx_path, "-", f"file not found (nor a torch file {spec.runtime.torch_file})"
            )
        if len(spec.runtime.networks) > 1:
            raise ModelPackageError(onnx_path, "runtime.networks", "file not found")
        logger.info("package %s has no %s; only the torch backend can run it", folder, ONNX_FILE)
        return ModelPackage(folder, spec, None, ts_path, (), (), card=card)
    networks = tuple(folder / name for name in spec.runtime.networks)
    package = _checked_network(folder, spec, onnx_path, ts_path if has_ts else None, networks)
    for other in networks[1:]:
        if not other.is_file():
            raise ModelPackageError(other, "runtime.networks", "file not found")
        _checked_network(folder, spec, other, None, networks)
    return replace(package, card=card)


def card_mismatch(path: Path | str) -> str | None:
    """Why a package's model card does not apply to it, read from ``model.toml`` and
    ``model_card.json`` alone (no graph loaded); ``None`` when it does or there is none.

    Raises
    ------
    ModelPackageError
        When ``model.toml`` or ``model_card.json`` is missing or wrong.
    """
    folder = Path(path)
    card = read_card(folder)
    if card is None:
        return None
    info = read_spec(folder).model
    return card.mismatch(info.name, info.version)


def _checked_network(
    folder: Path,
    spec: ModelSpec,
    onnx_path: Path,
    torch_path: Path | None,
    networks: tuple[Path, ...],
) -> ModelPackage:
    """The package as seen through one of its networks, checked against the spec."""
    model = _load_onnx(onnx_path)
    inputs, outputs = _graph_io(model.graph)
    package = ModelPackage(folder, spec, onnx_path, torch_path, inputs, outputs, networks)
    _check_input(package, onnx_path)
    _check_outputs(package, model.graph, onnx_path)
    return package


def _check_license(folder: Path, spec: ModelSpec) -> None:
    origin = spec.origin
    if origin is not None and origin.license_file and not (folder / origin.license_file).is_file():
        raise ModelPackageError(
            folder / SPEC_FILE,
            "origin.license_file",
            f"{origin.license_file!r} is not a file in the package",
        )


def _load_onnx(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise ModelPackageError(path, "graph", f"fails the ONNX checker: {exc}") from exc
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise ModelPackageError(path, "graph", f"not a loadable ONNX model: {exc}") from exc
    return model


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    elem_type = int(tensor_type.elem_type)
    dtype = _FLOAT_TYPES.get(elem_type) or onnx.TensorProto.DataType.Name(elem_type).lower()
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return TensorInfo(value.name, dtype, shape)


def _graph_io(graph: onnx.GraphProto) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    constant = {init.name for init in graph.initializer}
    inputs = tuple(_tensor_info(v) for v in graph.input if v.name not in constant)
    outputs = tuple(_tensor_info(v) for v in graph.output)
    return inputs, outputs


def _find(tensors: tuple[TensorInfo, ...], name: str, onnx_path: Path, kind: str) -> TensorInfo:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise ModelPackageError(
        onnx_path,
        f"graph.{kind}[{name}]",
        f"not in the graph; its {kind}s are {[t.name for t in tensors]}",
    )


def _check_input(package: ModelPackage, onnx_path: Path) -> None:
    spec = package.spec
    if len(package.inputs) != 1:
        raise ModelPackageError(
            onnx_path,
            "graph.input",
            f"expected one input, found {[t.name for t in package.inputs]}",
        )
    tensor = _find(package.inputs, spec.input.name, onnx_path, "input")
    field = f"graph.input[{tensor.name}]"
    if tensor.dtype not in _FLOAT_TYPES.values():
        raise ModelPackageError(
            onnx_path, field, f"element type {tensor.dtype}, expected float32/16"
        )
    rank = 2 + spec.input.dimensions
    if len(tensor.shape) != rank:
        raise ModelPackageError(
            onnx_path,
            field,
            f"rank {len(tensor.shape)} {tensor.shape}, input.dimensions "
            f"= {spec.input.dimensions} needs rank {rank} (batch, channels, ...)",
        )
    batch, channels, *spatial = tensor.shape
    if batch is not None and batch < spec.runtime.max_batch:
        raise ModelPackageError(
            onnx_path,
            field,
            f"static batch {batch} is below runtime.max_batch "
            f"{spec.runtime.max_batch}: export with a dynamic batch axis",
        )
    if channels is not None and channels != spec.input.channels:
        raise ModelPackageError(
            onnx_path,
            field,
            f"{channels} channels, model.toml input.channels = {spec.input.channels}",
        )
    for axis, (graph_len, spec_len) in enumerate(zip(spatial, spec.input.size, strict=True)):
        if graph_len is not None and graph_len != spec_len:
            raise ModelPackageError(
                onnx_path,
                field,
                f"spatial axis {axis} is {graph_len}, model.toml input.size says {spec_len}",
            )


def _expect(
    tensor: TensorInfo, rank: int, channel_axis: int, width: int, onnx_path: Path, why: str
) -> None:
    field = f"graph.output[{tensor.name}]"
    if len(tensor.shape) != rank:
        raise ModelPackageError(
            onnx_path, field, f"rank {len(tensor.shape)} {tensor.shape}, expected {rank} ({why})"
        )
    found = tensor.shape[channel_axis]
    if found is not None and found != width:
        raise ModelPackageError(
            onnx_path, field, f"axis {channel_axis} has {found} channels, expected {width} ({why})"
        )


def _check_outputs(package: ModelPackage, graph: onnx.GraphProto, onnx_path: Path) -> None:
    spec = package.spec
    out = spec.output
    n_labels = len(out.labels)
    width = n_labels + 1 if out.activation is Activation.SOFTMAX else n_labels
    why = f"{n_labels} labels in model.toml, activation {out.activation.value}"
    task = spec.model.task
    if task is Task.CLASSIFICATION:
        _expect(_find(package.outputs, out.name, onnx_path, "output"), 2, 1, width, onnx_path, why)
    elif task is Task.SEGMENTATION:
        rank = 2 + spec.input.dimensions
        _expect(
            _find(package.outputs, out.name, onnx_path, "output"), rank, 1, width, onnx_path, why
        )
    else:
        _expect(
            _find(package.outputs, out.boxes, onnx_path, "output"), 3, 2, 4, onnx_path, "corners"
        )
        _expect(
            _find(package.outputs, out.scores, onnx_path, "output"), 3, 2, width, onnx_path, why
        )
    if out.cam is not None:
        features = _find(package.outputs, out.cam.feature_output, onnx_path, "output")
        weight = _initializer(graph, out.cam.weight, onnx_path)
        if weight.ndim != 2 or weight.shape[0] != width:
            raise ModelPackageError(
                onnx_path,
                f"graph.initializer[{out.cam.weight}]",
                f"shape {weight.shape}, expected ({width}, channels) for CAM ({why})",
            )
        _expect(features, 4, 1, weight.shape[1], onnx_path, "CAM feature map (N, C, h, w)")


def _initializer(graph: onnx.GraphProto, name: str, onnx_path: Path) -> npt.NDArray[np.float32]:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).astype(np.float32)
    raise ModelPackageError(
        onnx_path, f"graph.initializer[{name}]", "not in the graph (output.cam.weight names it)"
    )
