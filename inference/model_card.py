"""The model card: what a package was trained on, how it was validated, how it is watched.

Regulators (FDA 510(k), EU MDR) ask a transfer-learning pipeline for three documents:
the provenance of its training data, validation results on external data, and a
post-market surveillance plan. A package carries them as ``model_card.json`` (the
fields below, which tools and the node read) and ``model_card.md`` (the same for
people, rendered from the JSON by `model_card_markdown`, written by `model_card_files`).
``dicom-node finetune``/``export`` write the card, ``evaluate --card`` appends
external validations, ``import-model`` fills what a MONAI bundle's metadata or an
nnU-Net dataset says, and the node names the card's version in every SR when it
matches the package's (`ModelCard.applies_to`).

This module needs neither torch nor matplotlib: the node reads cards too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.errors import ModelPackageError

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"


class _CardSection(BaseModel):
    # A misspelt field in a hand-edited card is an error, not a silently empty section.
    model_config = ConfigDict(extra="forbid")


class GroupCounts(_CardSection):
    """How many cases of each manufacturer, sex and age band."""

    by_manufacturer: dict[str, int] = {}
    by_sex: dict[str, int] = {}
    by_age_band: dict[str, int] = {}


class TrainingProvenance(_CardSection):
    """Provenance of the training data: where, when, who, and how it was labelled."""

    sources: list[str] = []
    study_date_first: str = ""
    study_date_last: str = ""
    unit: str = ""  # what one case is: study, series
    cases: int = 0
    patients: int = 0
    counts: GroupCounts = GroupCounts()
    positives: dict[str, int] = {}  # classification: positive cases per label
    labelling: str = ""  # how the labels were made (readers, consensus, SEG by whom)


class Validation(_CardSection):
    """One validation: the data it ran on and each label's figures.

    ``labels`` holds one entry per label with the figures of its task
    (classification: threshold, AUC and interval, sensitivity, specificity;
    segmentation: Dice and HD95 means with their intervals).
    """

    date: str
    dataset: str
    cases: int
    method: str = ""
    backend: str = ""
    report: str = ""
    labels: list[dict[str, Any]] = []


class SurveillancePlan(_CardSection):
    """The drift monitoring the package is watched with after go-live.

    The defaults are the node's ``[drift]`` defaults; ``dicom-node models --card``
    shows the thresholds of the node's own config instead, which are the ones in force.
    """

    window_studies: int = Field(default=200, ge=1)
    window_days: float = Field(default=30.0, gt=0)
    min_studies: int = Field(default=30, ge=1)
    psi_threshold: float = Field(default=0.25, gt=0)
    p_value: float = Field(default=0.001, gt=0, lt=1)
    source: str = "the node's [drift] defaults"


class CardOrigin(_CardSection):
    """Where an imported model came from, as its authors state it."""

    kind: str
    name: str = ""
    version: str = ""
    authors: list[str] = []
    license: str = ""
    data_source: str = ""
    references: list[str] = []
    stated_metrics: dict[str, Any] = {}  # the authors' own figures, not measured here


class ModelCard(_CardSection):
    """The machine-readable card of one package version."""

    model: str
    version: str
    description: str = ""
    intended_use: str = ""
    limitations: list[str] = []
    origin: CardOrigin | None = None
    training_data: TrainingProvenance | None = None
    internal_validation: Validation | None = None
    external_validations: list[Validation] = []
    surveillance: SurveillancePlan = SurveillancePlan()

    def applies_to(self, name: str, version: str) -> bool:
        """Whether this card describes the package ``name`` ``version``."""
        return self.model == name and self.version == version

    def mismatch(self, name: str, version: str) -> str | None:
        """Why this card does not apply to the package ``name`` ``version``, or ``None``."""
        if self.applies_to(name, version):
            return None
        return (
            f"model_card.json describes {self.model} {self.version} but model.toml is "
            f"{name} {version}: results will not name the card; update the card "
            "(dicom-node export, or edit its model and version after review)"
        )


def read_card(folder: Path | str) -> ModelCard | None:
    """The package's card, or ``None`` when it has no ``model_card.json``.

    Raises
    ------
    ModelPackageError
        When the file is not JSON or a field is wrong (named by its key path).
    """
    path = Path(folder) / CARD_JSON
    if not path.is_file():
        return None
    try:
        return ModelCard.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelPackageError(path, "-", f"not JSON: {exc}") from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "-"
        raise ModelPackageError(path, key, f"{error['msg']} (got {error.get('input')!r})") from exc


__all__ = [
    "CARD_JSON",
    "CARD_MD",
    "CardOrigin",
    "GroupCounts",
    "ModelCard",
    "SurveillancePlan",
    "TrainingProvenance",
    "Validation",
    "read_card",
]
