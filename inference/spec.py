"""The model package description, `model.toml`, parsed and checked field by field.

A package is a folder with ``model.toml`` and the network (``model.onnx``, and
optionally a ``torch.export`` program ``model.pt2`` or TorchScript ``model.pt`` for
the PyTorch backend). This module reads
the TOML into typed, frozen models; `inference.package` checks it against the graph.
Unknown keys are errors, so that a typo in a package fails at start-up rather than
silently falling back to a default.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.errors import ModelPackageError
from inference.prediction import CodedConcept, Label, ModelIdentity

SPEC_FILE = "model.toml"


class Task(StrEnum):
    """What the model produces; picks the Prediction type."""

    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"
    DETECTION = "detection"


class IntensityMethod(StrEnum):
    """How stored values become model input values."""

    WINDOW = "window"  # the model's own window (CT: HU after the Modality LUT)
    VOI = "voi"  # the dataset's own VOI window (Window Center/Width, VOI LUT)
    ZSCORE = "zscore"  # per image: (x - mean) / std
    MINMAX = "minmax"  # per image: to [0, 1] from min and max
    PERCENTILE = "percentile"  # per image: clip at percentiles, then to [0, 1]


class ResizeMode(StrEnum):
    """How a source frame is fitted to the model's input size."""

    STRETCH = "stretch"  # each axis scaled on its own
    LETTERBOX = "letterbox"  # one scale for all in-plane axes, zero padding centred


class Activation(StrEnum):
    """What turns the model's raw output into probabilities."""

    SIGMOID = "sigmoid"  # one independent channel per label
    SOFTMAX = "softmax"  # background channel 0, then one channel per label
    NONE = "none"  # the graph already outputs probabilities


class Precision(StrEnum):
    """Arithmetic precision asked of an accelerator backend."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Strict):
    """A coded concept: code value, coding scheme designator, code meaning."""

    value: Annotated[str, Field(min_length=1, max_length=64)]
    scheme: Annotated[str, Field(min_length=1, max_length=16)]
    meaning: Annotated[str, Field(min_length=1, max_length=64)]

    def concept(self) -> CodedConcept:
        """Return the plain-data concept carried in predictions."""
        return CodedConcept(self.value, self.scheme, self.meaning)


class LabelSpec(_Strict):
    """One model output: its name, what it finds, and the threshold it decides at."""

    name: Annotated[str, Field(min_length=1)]
    finding: CodeSpec
    category: CodeSpec
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5

    def label(self) -> Label:
        """Return the plain-data label carried in predictions."""
        return Label(self.name, self.finding.concept(), self.category.concept(), self.threshold)


class ModelInfo(_Strict):
    """Who the model is and what it is for."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    task: Task
    description: str = ""
    intended_use: Annotated[str, Field(min_length=1)]
    manufacturer: str = "DICOM AI node"
    not_for_clinical_use: bool = True


class IntensitySpec(_Strict):
    """Intensity handling; which fields apply depends on ``method``."""

    method: IntensityMethod
    center: float | None = None
    width: Annotated[float, Field(gt=0.0)] | None = None
    low_percentile: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    high_percentile: Annotated[float, Field(ge=0.0, le=100.0)] = 99.5

    @model_validator(mode="after")
    def _check_method_fields(self) -> IntensitySpec:
        if self.method is IntensityMethod.WINDOW and (self.center is None or self.width is None):
            raise ValueError("method 'window' needs both center and width")
        if self.low_percentile >= self.high_percentile:
            raise ValueError(
                f"low_percentile {self.low_percentile} must be below "
                f"high_percentile {self.high_percentile}"
            )
        return self


class InputSpec(_Strict):
    """Which series the model takes and how pixels are shaped for it."""

    name: Annotated[str, Field(min_length=1)]
    modalities: Annotated[tuple[str, ...], Field(min_length=1)]
    sop_classes: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    dimensions: Annotated[int, Field(ge=2, le=3)] = 2
    size: tuple[int, ...]
    channels: Annotated[int, Field(ge=1, le=4)] = 1
    resize: ResizeMode = ResizeMode.STRETCH
    min_slices: Annotated[int, Field(ge=1)] = 1
    max_spacing_deviation: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    intensity: IntensitySpec

    @model_validator(mode="after")
    def _check_size(self) -> InputSpec:
        if len(self.size) != self.dimensions or any(n < 1 for n in self.size):
            raise ValueError(
                f"size {list(self.size)} must hold {self.dimensions} positive lengths "
                f"({'slices, ' if self.dimensions == 3 else ''}rows, columns)"
            )
        return self


class CamSpec(_Strict):
    """Where a classifier's class activation map comes from.

    The graph exports its last feature map (N, C, h, w) as ``feature_output``; the
    linear head after global pooling is the initializer ``weight`` of shape (L, C).
    """

    feature_output: Annotated[str, Field(min_length=1)]
    weight: Annotated[str, Field(min_length=1)]


class OutputSpec(_Strict):
    """The graph outputs and the labels they carry."""

    name: str = ""
    boxes: str = ""
    scores: str = ""
    activation: Activation = Activation.SIGMOID
    labels: Annotated[tuple[LabelSpec, ...], Field(min_length=1)]
    cam: CamSpec | None = None
    iou_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    max_boxes: Annotated[int, Field(ge=1)] = 100

    @model_validator(mode="after")
    def _check_labels(self) -> OutputSpec:
        names = [label.name for label in self.labels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"label names must be unique, repeated: {duplicates}")
        return self


class RuntimeSpec(_Strict):
    """Hints for the backends."""

    max_batch: Annotated[int, Field(ge=1, le=1024)] = 8
    precision: Precision = Precision.FP16
    calibration: str = ""  # .npy of preprocessed inputs (N, C, ...), for int8
    torch_file: str = "model.pt2"  # torch.export program (.pt2) or TorchScript (.pt)


class ModelSpec(_Strict):
    """A whole ``model.toml``."""

    model: ModelInfo
    input: InputSpec
    output: OutputSpec
    runtime: RuntimeSpec = RuntimeSpec()

    @model_validator(mode="after")
    def _check_task_outputs(self) -> ModelSpec:
        task = self.model.task
        if task is Task.DETECTION:
            if not (self.output.boxes and self.output.scores):
                raise ValueError("a detection model needs output.boxes and output.scores")
        elif not self.output.name:
            raise ValueError(f"a {task} model needs output.name")
        if self.output.cam is not None and task is not Task.CLASSIFICATION:
            raise ValueError("output.cam applies to classification models only")
        if task is Task.CLASSIFICATION and self.input.dimensions != 2:
            raise ValueError("classification models take 2D images (input.dimensions = 2)")
        if self.runtime.precision is Precision.INT8 and not self.runtime.calibration:
            raise ValueError("runtime.precision 'int8' needs runtime.calibration")
        return self

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity as written into every result."""
        info = self.model
        description = info.description or info.intended_use
        if info.not_for_clinical_use and "not for clinical use" not in description.lower():
            description = f"{description} Not for clinical use.".strip()
        return ModelIdentity(
            name=info.name,
            version=info.version,
            description=description,
            manufacturer=info.manufacturer,
            not_for_clinical_use=info.not_for_clinical_use,
        )

    @property
    def labels(self) -> tuple[Label, ...]:
        """The labels as plain data, in output-channel order."""
        return tuple(spec.label() for spec in self.output.labels)


def read_spec(package: Path) -> ModelSpec:
    """Read and check ``model.toml`` in a package folder.

    Parameters
    ----------
    package : pathlib.Path
        The package folder.

    Returns
    -------
    ModelSpec
        The parsed description.

    Raises
    ------
    ModelPackageError
        When the folder or file is missing, the TOML does not parse, or a field is
        missing, unknown or out of range; the error names the file and the field.
    """
    path = Path(package) / SPEC_FILE
    if not path.is_file():
        raise ModelPackageError(path, "-", "file not found (a model package needs model.toml)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(path, "-", f"not valid TOML: {exc}") from exc
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "-"
        value = first.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        more = f" [and {exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
        raise ModelPackageError(path, field, f"{first['msg']}{shown}{more}") from exc
