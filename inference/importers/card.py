"""The model card of an imported package: what the MONAI bundle or nnU-Net result says.

A MONAI bundle's ``configs/metadata.json`` states its description, intended use,
authors, data source, references, licence and its own evaluation figures
(``eval_metrics``); an nnU-Net result's ``dataset.json`` names the dataset, its
description, reference, licence and training-case count, and each fold's
``validation/summary.json`` holds nnU-Net's own cross-validation Dice per label. The
card records these as their authors' statements: the node has measured none of them
(``dicom-node evaluate --card`` adds a measured external validation).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.model_card import CardOrigin, ModelCard, TrainingProvenance, Validation

logger = logging.getLogger(__name__)

_AUTHORS_NOTE = "Stated by the source's authors; not measured by this node."


def _text_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [str(item) for item in value if str(item).strip()]
    return [str(value)]


def _base(spec: dict[str, Any], origin: CardOrigin) -> ModelCard:
    info = spec["model"]
    limitations = [_AUTHORS_NOTE]
    if info.get("not_for_clinical_use", True):
        limitations.append("Not for clinical use (model.toml: not_for_clinical_use = true).")
    return ModelCard(
        model=info["name"],
        version=info["version"],
        description=info.get("description", ""),
        intended_use=info.get("intended_use", ""),
        limitations=limitations,
        origin=origin,
    )


def bundle_card(meta: dict[str, Any], spec: dict[str, Any]) -> ModelCard:
    """The card of a package imported from a MONAI bundle with metadata ``meta``."""
    origin = CardOrigin(
        kind="monai-bundle",
        name=str(meta.get("name", "")),
        version=str(meta.get("version", "")),
        authors=_text_list(meta.get("authors")),
        license=str(meta.get("license") or meta.get("copyright") or ""),
        data_source=str(meta.get("data_source", "")),
        references=_text_list(meta.get("references")),
        stated_metrics=dict(meta.get("eval_metrics") or {}),
    )
    return _base(spec, origin)


def _fold_summaries(result: Path, folds: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for fold in folds:
        path = result / f"fold_{fold}" / "validation" / "summary.json"
        if path.is_file():
            try:
                found.append((fold, json.loads(path.read_text(encoding="utf-8"))))
            except json.JSONDecodeError as exc:
                logger.warning("%s is not JSON (%s): left out of the model card", path, exc)
    return found


def _cross_validation(
    result: Path, folds: Sequence[str], label_ids: dict[str, int]
) -> Validation | None:
    """nnU-Net's own validation Dice per label, averaged over the imported folds."""
    summaries = _fold_summaries(result, folds)
    if not summaries:
        return None
    labels = []
    for name, number in label_ids.items():
        values = [
            float(s["mean"][str(number)]["Dice"])
            for _, s in summaries
            if str(number) in s.get("mean", {})
        ]
        if values:
            labels.append({"label": name, "dice_mean": round(sum(values) / len(values), 6)})
    cases = sum(len(s.get("metric_per_case", [])) for _, s in summaries)
    return Validation(
        date=dt.datetime.now(dt.UTC).date().isoformat(),
        dataset=f"nnU-Net validation of fold(s) {', '.join(f for f, _ in summaries)}",
        cases=cases,
        method="nnU-Net's own cross-validation (fold_X/validation/summary.json), as nnU-Net "
        "computed it on its resampled data; not measured by this node",
        labels=labels,
    )


def nnunet_card(
    dataset: dict[str, Any], result: Path, folds: Sequence[str], spec: dict[str, Any]
) -> ModelCard:
    """The card of a package imported from the nnU-Net result folder ``result``."""
    reference = _text_list(dataset.get("reference"))
    origin = CardOrigin(
        kind="nnunet",
        name=str(dataset.get("name", "")),
        version=str(dataset.get("release", "")),
        license=str(dataset.get("licence") or dataset.get("license") or ""),
        data_source=str(dataset.get("description", "")),
        references=reference,
    )
    training = TrainingProvenance(
        sources=reference or [str(dataset.get("name", "")) or "not stated"],
        unit="case",
        cases=int(dataset.get("numTraining", 0) or 0),
    )
    label_ids = {
        str(name): int(number)
        for name, number in (dataset.get("labels") or {}).items()
        if isinstance(number, int) and number > 0
    }
    return _base(spec, origin).model_copy(
        update={
            "training_data": training,
            "internal_validation": _cross_validation(result, folds, label_ids),
        }
    )
