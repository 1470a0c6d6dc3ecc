"""The fine-tuning configuration: the package-to-be plus how to train it.

A training config is a TOML file with the sections of ``model.toml`` (``[model]``,
``[input]``, ``[output]`` with its labels and codes, ``[runtime]``), a ``[training]``
section and an optional ``[card]`` section (the model card's data provenance, see
`inference.finetune.model_card`). The package sections are checked with the very models the
node uses (`inference.spec`), so that preprocessing during training is defined by
the same spec the node will read, and a config that would give an invalid package
fails before any training starts. Export fills in what only the trained graph
knows (output names, the CAM head) and the thresholds chosen on validation.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.errors import ModelPackageError
from inference.finetune.augment import AugmentConfig
from inference.finetune.card_config import CardSection
from inference.finetune.networks import Backbone
from inference.finetune.schedule import ScheduleKind
from inference.spec import Activation, CamSpec, ModelSpec, Task

_Model = TypeVar("_Model", bound=BaseModel)

LOGITS_OUTPUT = "logits"
FEATURES_OUTPUT = "features"
INPUT_NAME_DEFAULT = "image"


class TrainingSection(BaseModel):
    """``[training]``: the backbone, the optimisation and the validation protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Backbone = Backbone.RESNET18
    output_stride: Literal[8, 16, 32] = 32  # 8 or 16: a finer CAM (classifiers)
    pooling: Literal["avg", "max", "lse"] = "avg"  # max, lse: CAM peaks at the finding
    encoder_depth: Annotated[int, Field(ge=1, le=5)] = 5  # fewer stages: a more local CAM
    weights: str = ""  # local torchvision-layout state dict; empty: random initialisation
    epochs: Annotated[int, Field(ge=1)] = 20
    batch_size: Annotated[int, Field(ge=1)] = 16
    lr: Annotated[float, Field(gt=0)] = 1e-3  # the new layers' rate
    encoder_lr_factor: Annotated[float, Field(gt=0, le=1)] = 0.1  # encoder: lr x this
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    schedule: ScheduleKind = ScheduleKind.COSINE
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    step_size: Annotated[int, Field(ge=1)] = 10
    step_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    freeze_stages: Annotated[int, Field(ge=0, le=5)] = 3  # of 5 encoder stages
    unfreeze_every: Annotated[int, Field(ge=0)] = 2  # epochs per stage thawed; 0: never
    loss: Literal["focal", "bce", "dice_ce"] = "focal"
    focal_gamma: Annotated[float, Field(ge=0)] = 2.0
    focal_alpha: Annotated[float, Field(ge=0, le=1)] | None = None
    dice_weight: Annotated[float, Field(ge=0)] = 1.0
    folds: Annotated[int, Field(ge=1, le=20)] = 5
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # with folds = 1
    patience: Annotated[int, Field(ge=1)] = 5
    seed: int = 0
    amp: bool = True  # mixed precision, on a GPU only
    threshold: str = "youden"  # youden | sensitivity:X | a number in (0, 1)
    age_bands: tuple[int, ...] = (18, 40, 65)
    bootstrap: Annotated[int, Field(ge=0)] = 1000
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainingSection:
        if (
            list(self.age_bands) != sorted(set(self.age_bands))
            or min(self.age_bands, default=1) < 1
        ):
            raise ValueError(f"age_bands must be increasing positive ages, got {self.age_bands}")
        return self


class FinetuneConfig(BaseModel):
    """A whole training config: the package spec to produce and the training section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: ModelSpec
    training: TrainingSection
    card: CardSection = CardSection()  # the model card's provenance text
    base_dir: Path = Path(".")  # relative paths (weights) are relative to this

    @model_validator(mode="after")
    def _check_task(self) -> FinetuneConfig:
        task = self.spec.model.task
        segmentation = self.training.backbone.segmentation
        if task is Task.DETECTION:
            raise ValueError("fine-tuning covers classification and segmentation, not detection")
        if segmentation != (task is Task.SEGMENTATION):
            raise ValueError(
                f"backbone {self.training.backbone.value} does not fit task {task.value}"
            )
        if self.spec.input.dimensions != 2:
            raise ValueError("fine-tuning trains 2D networks (input.dimensions = 2)")
        if task is Task.CLASSIFICATION:
            if self.spec.output.activation is not Activation.SIGMOID:
                raise ValueError("classifiers are trained with output.activation = 'sigmoid'")
            if self.training.loss == "dice_ce":
                raise ValueError("loss 'dice_ce' is for segmentation; use focal or bce")
        else:
            if self.spec.output.activation is not Activation.SOFTMAX:
                raise ValueError("segmentation is trained with output.activation = 'softmax'")
            if self.training.loss != "dice_ce":
                raise ValueError("segmentation is trained with loss = 'dice_ce'")
            if any(n % 32 for n in self.spec.input.size):
                raise ValueError(f"U-Net input.size {self.spec.input.size} must be multiples of 32")
        if self.spec.input.channels not in (1, 3):
            raise ValueError(f"input.channels must be 1 or 3, got {self.spec.input.channels}")
        return self

    @property
    def task(self) -> Task:
        """Classification or segmentation."""
        return self.spec.model.task

    @property
    def weights_path(self) -> Path | None:
        """The pretrained weights file, or ``None`` for random initialisation."""
        if not self.training.weights:
            return None
        path = Path(self.training.weights)
        return path if path.is_absolute() else self.base_dir / path

    def fingerprint(self) -> str:
        """A hash of everything that changes training, to refuse resuming a different run."""
        payload = self.model_dump(mode="json", exclude={"base_dir", "card"})
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _package_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """The model.toml part of a training config, with what export decides filled in."""
    sections = {k: v for k, v in raw.items() if k not in ("training", "card")}
    task = str(sections.get("model", {}).get("task", ""))
    output = dict(sections.get("output", {}))
    output.setdefault("name", LOGITS_OUTPUT)
    if task == Task.SEGMENTATION.value:
        output.setdefault("activation", Activation.SOFTMAX.value)
    sections["output"] = output
    inputs = dict(sections.get("input", {}))
    inputs.setdefault("name", INPUT_NAME_DEFAULT)
    sections["input"] = inputs
    return sections


def parse_config(
    raw: dict[str, Any], source: Path, overrides: dict[str, Any] | None = None
) -> FinetuneConfig:
    """Check a training config given as a dict (the parsed TOML).

    Parameters
    ----------
    raw : dict
        The TOML content.
    source : pathlib.Path
        The file it came from, named in errors; relative paths are taken from its
        folder.
    overrides : dict, optional
        ``[training]`` keys set on the command line (``None`` values are ignored).

    Returns
    -------
    FinetuneConfig

    Raises
    ------
    ModelPackageError
        When a key is missing, unknown or out of range; names the file and key.
    """
    training = dict(raw.get("training", {}))
    training.update({k: v for k, v in (overrides or {}).items() if v is not None})
    spec = _validated(ModelSpec, _package_sections(raw), source, "")
    section = _validated(TrainingSection, training, source, "training.")
    card = _validated(CardSection, raw.get("card", {}), source, "card.")
    try:
        return FinetuneConfig(spec=spec, training=section, card=card, base_dir=source.parent)
    except ValidationError as exc:
        raise _package_error(exc, source, "") from exc


def _package_error(exc: ValidationError, source: Path, prefix: str) -> ModelPackageError:
    first = exc.errors()[0]
    field = prefix + (".".join(str(part) for part in first["loc"]) or "-")
    more = f" [and {exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
    return ModelPackageError(source, field.rstrip("."), f"{first['msg']}{more}")


def _validated(kind: type[_Model], raw: dict[str, Any], source: Path, prefix: str) -> _Model:
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        raise _package_error(exc, source, prefix) from exc


def read_config(path: Path | str, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    """Read and check a training config file.

    Parameters
    ----------
    path : pathlib.Path or str
        The TOML file.
    overrides : dict, optional
        ``[training]`` keys from the command line.

    Returns
    -------
    FinetuneConfig

    Raises
    ------
    ModelPackageError
        When the file is missing, is not TOML, or a key is wrong.
    """
    source = Path(path)
    if not source.is_file():
        raise ModelPackageError(source, "-", "training config not found")
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(source, "-", f"not valid TOML: {exc}") from exc
    return parse_config(raw, source, overrides)


def exported_spec(
    config: FinetuneConfig, thresholds: list[float], cam_weight: str | None
) -> ModelSpec:
    """The package spec after training: thresholds from validation, the CAM head named.

    Raises
    ------
    ValueError
        When the number of thresholds differs from the number of labels.
    """
    spec = config.spec
    labels = spec.output.labels
    if len(thresholds) != len(labels):
        raise ValueError(f"{len(thresholds)} thresholds for {len(labels)} labels")
    new_labels = tuple(
        label.model_copy(update={"threshold": float(t)})
        for label, t in zip(labels, thresholds, strict=True)
    )
    cam = CamSpec(feature_output=FEATURES_OUTPUT, weight=cam_weight) if cam_weight else None
    output = spec.output.model_copy(
        update={"labels": new_labels, "name": LOGITS_OUTPUT, "cam": cam}
    )
    return ModelSpec.model_validate({**spec.model_dump(), "output": output.model_dump()})
