"""The model card of a fine-tuned package, from its training data and validation reports.

``dicom-node finetune`` writes the run's card (``RUN/model_card.json``, ``.md``): the
training data's provenance (sources, Study Date range, counts by manufacturer, sex and
age band, how labels were made, from the ``[card]`` section of the training config)
and the internal validation (cross-validation figures). ``dicom-node export`` writes
the package's card from the run's, for the fold it ships and under the package's name
and version. ``dicom-node evaluate --card`` appends an external validation, so that
whatever else the card holds stays as it was. The card's format is `inference.model_card`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.errors import ModelPackageError
from inference.finetune.config import FinetuneConfig
from inference.finetune.data import Case, TrainingData
from inference.finetune.report import EXTERNAL, RESULTS_JSON
from inference.model_card import (
    CARD_JSON,
    GroupCounts,
    ModelCard,
    TrainingProvenance,
    Validation,
    read_card,
)
from inference.model_card_files import write_card
from inference.spec import ModelSpec, Task

logger = logging.getLogger(__name__)

Json = dict[str, Any]
REPORT_DIR = "report"  # where `finetune` writes the run's report (run.REPORT_DIR)


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def training_provenance(
    cases: Sequence[Case], unit: str, labels: Sequence[str], sources: Sequence[str], labelling: str
) -> TrainingProvenance:
    """Who and what the training cases were: dates, counts by group, positives per label."""
    dates = sorted(c.study_date for c in cases if c.study_date)
    positives = {
        name: sum(1 for c in cases if c.target and c.target[k] > 0.5)
        for k, name in enumerate(labels)
    }
    return TrainingProvenance(
        sources=list(sources),
        study_date_first=dates[0] if dates else "",
        study_date_last=dates[-1] if dates else "",
        unit=unit,
        cases=len(cases),
        patients=len({c.patient for c in cases}),
        counts=GroupCounts(
            by_manufacturer=dict(Counter(c.manufacturer for c in cases)),
            by_sex=dict(Counter(c.sex for c in cases)),
            by_age_band=dict(Counter(c.age_band for c in cases)),
        ),
        positives=positives if any(c.target for c in cases) else {},
        labelling=labelling,
    )


def _classification_entry(name: str, pooled: Json, row: Json) -> Json:
    """A label's AUC (``pooled``) and operating point (``row``: one fold or external)."""
    return {
        "label": name,
        "threshold": row["threshold"],
        "n": pooled["n"],
        "positives": pooled["positives"],
        "auc": pooled["auc"],
        "auc_ci95": pooled["auc_ci95"],
        "auc_ci_note": pooled["auc_ci_note"],
        "sensitivity": row["sensitivity"],
        "sensitivity_ci95": row["sensitivity_ci95"],
        "specificity": row["specificity"],
        "specificity_ci95": row["specificity_ci95"],
    }


def _segmentation_entry(name: str, pooled: Json) -> Json:
    keys = (
        "n",
        "dice_mean",
        "dice_ci95",
        "dice_ci_note",
        "hausdorff95_mean",
        "hausdorff95_ci95",
        "hausdorff95_ci_note",
        "hausdorff_undefined",
        "hausdorff_unit",
    )
    return {"label": name, **{key: pooled.get(key) for key in keys}}


def label_figures(results: Json, fold: int | str) -> list[Json]:
    """Each label's card figures from a report's results, at ``fold``'s operating point."""
    entries = []
    for label in results["labels"]:
        if results["task"] == Task.CLASSIFICATION.value:
            row = next(f for f in label["folds"] if f["fold"] == fold)
            entries.append(_classification_entry(label["label"], label["pooled"], row))
        else:
            entries.append(_segmentation_entry(label["label"], label["pooled"]))
    return entries


def internal_validation(
    results: Json, run: Json, fold: int, report: Path, training: TrainingProvenance
) -> Validation:
    """The cross-validation as the card states it, for the network of ``fold``."""
    if results["task"] == Task.CLASSIFICATION.value:
        method = (
            f"{run['folds']}-fold patient-level cross-validation; AUC pooled out of fold; "
            f"threshold, sensitivity and specificity of fold {fold}'s network (shipped) on "
            "its own validation cases, where its threshold was chosen: optimistic"
        )
    else:
        method = f"{run['folds']}-fold patient-level cross-validation, figures per image, pooled"
    return Validation(
        date=_today(),
        dataset="; ".join(training.sources) or "the training data",
        cases=training.cases,
        method=method,
        backend=f"PyTorch ({run['device']})",
        report=str(report),
        labels=label_figures(results, fold),
    )


def _base_card(spec: ModelSpec, limitations: Sequence[str]) -> ModelCard:
    info = spec.model
    notes = list(limitations)
    if info.not_for_clinical_use:
        notes.append("Not for clinical use (model.toml: not_for_clinical_use = true).")
    return ModelCard(
        model=info.name,
        version=info.version,
        description=info.description,
        intended_use=info.intended_use,
        limitations=notes,
    )


def write_training_card(
    run_dir: Path,
    config: FinetuneConfig,
    data: TrainingData,
    results: Json,
    run: Json,
    report: Path,
    dataset: Path | str,
) -> Path:
    """Write the run's card: training provenance and the selected fold's validation.

    ``sources`` default to the DICOM folder the run was trained on.

    Raises
    ------
    OSError
        When the run folder is not writable.
    """
    spec, card = config.spec, config.card
    labels = [label.name for label in spec.output.labels]
    sources = card.sources or [str(dataset)]
    training = training_provenance(data.cases, data.level, labels, sources, card.labelling)
    fold = int(results["selection"]["fold"])
    document = _base_card(spec, card.limitations).model_copy(
        update={
            "training_data": training,
            "internal_validation": internal_validation(results, run, fold, report, training),
        }
    )
    return write_card(run_dir, document)


def write_package_card(run_dir: Path, package_dir: Path, spec: ModelSpec, fold: int) -> Path | None:
    """Write the package's card from its run's: the package's name and version, and the
    internal validation of the fold it ships. ``None``, with a warning, for a run from
    before model cards (it has none to start from).

    Raises
    ------
    ModelPackageError
        When the run's card is malformed.
    """
    run_card = read_card(run_dir)
    results_path = run_dir / REPORT_DIR / RESULTS_JSON
    if run_card is None or run_card.training_data is None or not results_path.is_file():
        logger.warning("%s has no model card to export (a run from before cards)", run_dir)
        return None
    results = json.loads(results_path.read_text(encoding="utf-8"))
    internal = internal_validation(
        results, results["run"], fold, results_path.parent, run_card.training_data
    )
    document = run_card.model_copy(
        update={
            "model": spec.model.name,
            "version": spec.model.version,
            "internal_validation": internal,
        }
    )
    return write_card(package_dir, document)


def check_card_applies(package: Path, spec: ModelSpec) -> None:
    """Refuse to extend a card written for another name or version of the package.

    Raises
    ------
    ModelPackageError
        When ``model_card.json`` is malformed or describes another version.
    """
    card = read_card(package)
    info = spec.model
    if card is not None and not card.applies_to(info.name, info.version):
        raise ModelPackageError(
            package / CARD_JSON,
            "version",
            f"the card describes {card.model} {card.version}, the package is {info.name} "
            f"{info.version}: bring the card up to date before adding a validation to it",
        )


def record_external_validation(
    package: Path, spec: ModelSpec, results: Json, run: Json, report: Path
) -> Validation:
    """Append one external validation to the package's card (created if it has none).

    Raises
    ------
    OSError
        When the package folder is not writable.
    ModelPackageError
        When an existing ``model_card.json`` is malformed.
    """
    entry = Validation(
        date=_today(),
        dataset=str(Path(run["dataset"]).resolve()),
        cases=run["cases"],
        method="the package as the node runs it, at its own thresholds",
        backend=run["backend"],
        report=str(report.resolve()),
        labels=label_figures(results, EXTERNAL),
    )
    card = read_card(package) or _base_card(spec, [])
    write_card(
        package,
        card.model_copy(update={"external_validations": [*card.external_validations, entry]}),
    )
    return entry
