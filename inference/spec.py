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
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    SCALE_RANGE = "scale_range"  # MONAI ScaleIntensityRange: a_min..a_max to b_min..b_max
    NORMALIZE = "normalize"  # MONAI NormalizeIntensity: fixed or per-image mean and std
    CT_NORMALIZATION = "ct_normalization"  # nnU-Net CTNormalization: clip, then mean/std
    CHANNEL_MEAN_STD = "channel_mean_std"  # to [0, 1], then fixed mean/std per channel


class ResizeMode(StrEnum):
    """How a source frame is fitted to the model's input size."""

    STRETCH = "stretch"  # each axis scaled on its own
    LETTERBOX = "letterbox"  # one scale for all in-plane axes, zero padding centred


class Activation(StrEnum):
    """What turns the model's raw output into probabilities."""

    SIGMOID = "sigmoid"  # one independent channel per label
    SOFTMAX = "softmax"  # background channel 0, then one channel per label
    NONE = "none"  # the graph already outputs probabilities


class Interpolated(StrEnum):
    """What goes back onto the source grid linearly, before the decision."""

    PROBABILITIES = "probabilities"  # MONAI bundles: Activationsd, then Invertd
    LOGITS = "logits"  # nnU-Net: resample the logits, then softmax / sigmoid


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


_METHOD_FIELDS: dict[IntensityMethod, frozenset[str]] = {
    IntensityMethod.WINDOW: frozenset({"center", "width"}),
    IntensityMethod.VOI: frozenset(),
    IntensityMethod.ZSCORE: frozenset(),
    IntensityMethod.MINMAX: frozenset(),
    IntensityMethod.PERCENTILE: frozenset({"low_percentile", "high_percentile"}),
    IntensityMethod.SCALE_RANGE: frozenset({"a_min", "a_max", "b_min", "b_max", "clip"}),
    IntensityMethod.NORMALIZE: frozenset({"mean", "std", "nonzero"}),
    IntensityMethod.CT_NORMALIZATION: frozenset({"lower", "upper", "mean", "std"}),
    IntensityMethod.CHANNEL_MEAN_STD: frozenset(
        {"mean", "std", "center", "width", "a_min", "a_max"}
    ),
}
"""The keys each method reads; any other key set beside it is an error."""


class IntensitySpec(_Strict):
    """Intensity handling; which fields apply depends on ``method``.

    Every method reads only its own keys (`_METHOD_FIELDS`); a key of another
    method set to a value is refused, so that a package never silently ignores
    what it says.
    """

    method: IntensityMethod
    center: float | None = None
    width: Annotated[float, Field(gt=0.0)] | None = None
    low_percentile: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5
    high_percentile: Annotated[float, Field(ge=0.0, le=100.0)] = 99.5
    a_min: float | None = None
    a_max: float | None = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    nonzero: bool = False
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _check_method_fields(self) -> IntensitySpec:
        # A key of another method set to anything but its default is an error; the
        # defaults themselves pass, so that a dumped spec (every field) reads back.
        foreign = sorted(
            key
            for key in self.model_fields_set - _METHOD_FIELDS[self.method] - {"method"}
            if getattr(self, key) != type(self).model_fields[key].default
        )
        if foreign:
            raise ValueError(f"method {self.method.value!r} does not use {foreign}")
        if self.method is IntensityMethod.WINDOW and (self.center is None or self.width is None):
            raise ValueError("method 'window' needs both center and width")
        if self.low_percentile >= self.high_percentile:
            raise ValueError(
                f"low_percentile {self.low_percentile} must be below "
                f"high_percentile {self.high_percentile}"
            )
        check = _METHOD_CHECKS.get(self.method)
        if check is not None:
            check(self)
        return self

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel for ``channel_mean_std`` (a scalar repeats)."""
        mean, std = self.mean, self.std
        assert mean is not None and std is not None  # checked by the validator
        return (
            mean if isinstance(mean, tuple) else (mean,),
            std if isinstance(std, tuple) else (std,),
        )


def _positive(values: float | tuple[float, ...], key: str) -> None:
    numbers = values if isinstance(values, tuple) else (values,)
    if not numbers or min(numbers) <= 0:
        raise ValueError(f"{key} must be positive, got {values!r}")


def _check_scale_range(spec: IntensitySpec) -> None:
    if spec.a_min is None or spec.a_max is None:
        raise ValueError("method 'scale_range' needs a_min and a_max")
    if spec.a_min == spec.a_max:
        raise ValueError(f"a_min and a_max are both {spec.a_min}: the range is empty")


def _check_normalize(spec: IntensitySpec) -> None:
    if (spec.mean is None) != (spec.std is None):
        raise ValueError("method 'normalize' takes mean and std together, or neither (per image)")
    if isinstance(spec.mean, tuple) or isinstance(spec.std, tuple):
        raise ValueError("method 'normalize' takes one mean and one std, not lists")
    if spec.std is not None:
        _positive(spec.std, "std")


def _check_ct_normalization(spec: IntensitySpec) -> None:
    values = {"lower": spec.lower, "upper": spec.upper, "mean": spec.mean, "std": spec.std}
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise ValueError(f"method 'ct_normalization' needs {missing}")
    if isinstance(spec.mean, tuple) or isinstance(spec.std, tuple):
        raise ValueError("method 'ct_normalization' takes one mean and one std, not lists")
    assert spec.lower is not None and spec.upper is not None and spec.std is not None
    if spec.lower >= spec.upper:
        raise ValueError(f"lower {spec.lower} must be below upper {spec.upper}")
    _positive(spec.std, "std")


def _check_channel_mean_std(spec: IntensitySpec) -> None:
    if spec.mean is None or spec.std is None:
        raise ValueError("method 'channel_mean_std' needs mean and std (one per channel)")
    _positive(spec.std, "std")
    window = spec.center is not None or spec.width is not None
    scale = spec.a_min is not None or spec.a_max is not None
    if window == scale:
        raise ValueError(
            "method 'channel_mean_std' scales to [0, 1] by either center and width or "
            "a_min and a_max (exactly one pair)"
        )
    if window and (spec.center is None or spec.width is None):
        raise ValueError("method 'channel_mean_std' needs both center and width")
    if scale:
        _check_scale_range(spec)


_METHOD_CHECKS = {
    IntensityMethod.SCALE_RANGE: _check_scale_range,
    IntensityMethod.NORMALIZE: _check_normalize,
    IntensityMethod.CT_NORMALIZATION: _check_ct_normalization,
    IntensityMethod.CHANNEL_MEAN_STD: _check_channel_mean_std,
}


AXIS_LETTERS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
"""Which patient axis (LPS x, y, z) each orientation letter names."""
SOURCE_ORIENTATION = "source"


class Blending(StrEnum):
    """How overlapping windows are weighted where they meet."""

    GAUSSIAN = "gaussian"  # centre counts most (MONAI, nnU-Net)
    CONSTANT = "constant"  # plain average


class Placement(StrEnum):
    """Where windows start along an axis."""

    INTERVAL = "interval"  # MONAI: every int(patch * (1 - overlap)), the last flush with the end
    EVEN = "even"  # nnU-Net: as few as the overlap allows, spread evenly from start to end


class Padding(StrEnum):
    """How a volume smaller than one patch is padded up to it."""

    CONSTANT = "constant"
    EDGE = "edge"
    REFLECT = "reflect"


def _orientation_code(value: str) -> str:
    code = value.upper() if value != SOURCE_ORIENTATION else value
    if code == SOURCE_ORIENTATION:
        return code
    if len(code) != 3 or any(c not in AXIS_LETTERS for c in code):
        raise ValueError(
            f"orientation {value!r} must be 'source' or three letters of L/R, P/A, S/I"
        )
    if sorted(AXIS_LETTERS[c] for c in code) != [0, 1, 2]:
        raise ValueError(f"orientation {value!r} names one patient axis twice")
    return code


Spacing = Annotated[float, Field(gt=0.0, le=100.0)] | Literal["keep"]


class GeometrySpec(_Strict):
    """The voxel grid the network was trained on (network axis order), see CONTRACT.

    ``orientation`` is a three-letter code (where each array axis points as its
    index grows, MONAI's convention: the node then resamples as MONAI's
    ``Orientationd`` + ``Spacingd`` do) or ``"source"`` (slice, row, column as the
    stack lies, nnU-Net's view: the node resamples by shape as nnU-Net does).
    ``transpose`` permutes the axes after that; ``spacing`` is per network axis.
    """

    orientation: str = SOURCE_ORIENTATION
    transpose: tuple[int, int, int] = (0, 1, 2)
    spacing: tuple[Spacing, Spacing, Spacing] = ("keep", "keep", "keep")
    interpolation: Annotated[int, Field(ge=0, le=3)] = 1
    max_slice_step_deviation: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    resample_uneven: bool = False
    crop_foreground: bool = False
    crop_threshold: float = 0.0
    crop_margin: Annotated[int, Field(ge=0, le=1024)] = 0

    _orientation = field_validator("orientation")(_orientation_code)

    @field_validator("transpose")
    @classmethod
    def _check_transpose(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if sorted(value) != [0, 1, 2]:
            raise ValueError(f"transpose {list(value)} is not a permutation of 0, 1, 2")
        return value


class WindowSpec(_Strict):
    """Sliding-window inference over the network grid (network axis order)."""

    patch: tuple[
        Annotated[int, Field(ge=1, le=1024)],
        Annotated[int, Field(ge=1, le=1024)],
        Annotated[int, Field(ge=1, le=1024)],
    ]
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.25
    blending: Blending = Blending.GAUSSIAN
    placement: Placement = Placement.INTERVAL
    sigma_scale: Annotated[float, Field(gt=0.0, le=10.0)] = 0.125
    batch: Annotated[int, Field(ge=1, le=1024)] = 1
    padding: Padding = Padding.CONSTANT
    padding_value: float = 0.0
    mirror_axes: tuple[Annotated[int, Field(ge=0, le=2)], ...] = ()

    @model_validator(mode="after")
    def _check(self) -> WindowSpec:
        if len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes {list(self.mirror_axes)} repeats an axis")
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
    geometry: GeometrySpec | None = None
    window: WindowSpec | None = None

    @model_validator(mode="after")
    def _check_size(self) -> InputSpec:
        if len(self.size) != self.dimensions or any(n < 1 for n in self.size):
            raise ValueError(
                f"size {list(self.size)} must hold {self.dimensions} positive lengths "
                f"({'slices, ' if self.dimensions == 3 else ''}rows, columns)"
            )
        if self.intensity.method is IntensityMethod.CHANNEL_MEAN_STD:
            mean, std = self.intensity.channel_stats()
            if len(mean) not in (1, self.channels) or len(std) not in (1, self.channels):
                raise ValueError(
                    f"intensity.mean {list(mean)} and intensity.std {list(std)} need one "
                    f"value or one per channel ({self.channels})"
                )
        if (self.geometry is not None or self.window is not None) and self.dimensions != 3:
            raise ValueError("input.geometry and input.window apply to 3D inputs (dimensions = 3)")
        if self.geometry is not None and self.window is None:
            raise ValueError("input.geometry needs input.window (the network runs patch by patch)")
        if self.window is not None and tuple(self.window.patch) != tuple(self.size):
            raise ValueError(
                f"input.size {list(self.size)} must equal input.window.patch "
                f"{list(self.window.patch)}"
            )
        return self

    @property
    def volume_geometry(self) -> GeometrySpec | None:
        """The grid of a windowed 3D package (the source grid where none is given)."""
        if self.window is None:
            return None
        return self.geometry or GeometrySpec()


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
    interpolate: Interpolated = Interpolated.PROBABILITIES
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


FileName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/\\]+$")]
"""A file in the package folder itself (no path separators)."""
NetworkFile = Annotated[str, Field(min_length=6, max_length=255, pattern=r"^[^/\\]+\.onnx$")]
"""An ONNX network file in the package folder."""


class RuntimeSpec(_Strict):
    """Hints for the backends."""

    max_batch: Annotated[int, Field(ge=1, le=1024)] = 8
    precision: Precision = Precision.FP16
    calibration: str = ""  # .npy of preprocessed inputs (N, C, ...), for int8
    torch_file: str = "model.pt2"  # torch.export program (.pt2) or TorchScript (.pt)
    networks: Annotated[tuple[NetworkFile, ...], Field(min_length=1, max_length=32)] = (
        "model.onnx",
    )

    @model_validator(mode="after")
    def _check_networks(self) -> RuntimeSpec:
        repeated = sorted({n for n in self.networks if self.networks.count(n) > 1})
        if repeated:
            raise ValueError(f"networks repeats {repeated}")
        return self


class OriginKind(StrEnum):
    """Where an imported package came from."""

    MONAI_BUNDLE = "monai-bundle"
    NNUNET = "nnunet"
    FINETUNE = "finetune"


class OriginSpec(_Strict):
    """Where the package came from (written by importers, shown by the node)."""

    kind: OriginKind
    name: Annotated[str, Field(min_length=1, max_length=256)]
    version: str = ""
    source: str = ""
    license_file: FileName | None = None


class ModelSpec(_Strict):
    """A whole ``model.toml``."""

    model: ModelInfo
    input: InputSpec
    output: OutputSpec
    runtime: RuntimeSpec = RuntimeSpec()
    origin: OriginSpec | None = None

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
        window = self.input.window
        if window is not None:
            if task is not Task.SEGMENTATION:
                raise ValueError("input.window applies to segmentation models only")
            if window.batch > self.runtime.max_batch:
                raise ValueError(
                    f"input.window.batch {window.batch} exceeds runtime.max_batch "
                    f"{self.runtime.max_batch}"
                )
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
