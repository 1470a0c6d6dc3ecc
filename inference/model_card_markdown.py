"""A model card for people: the Markdown rendering of ``model_card.json``.

Sections in the order a reviewer reads them: what the model is for and where it must
not be used, what it was trained on, how it was validated (internally, then on each
external set), and how it is watched after go-live.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inference.figure_format import fmt, interval_text
from inference.model_card import ModelCard, SurveillancePlan, TrainingProvenance, Validation

_NOT_STATED = "not stated"


def _counts(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"- {title}: {_NOT_STATED}"
    return f"- {title}: " + ", ".join(f"{group} {n}" for group, n in sorted(counts.items()))


def _training(data: TrainingProvenance | None) -> list[str]:
    lines = ["## Training data", ""]
    if data is None:
        return [*lines, "Not recorded for this package.", ""]
    dates = (
        f"{data.study_date_first} to {data.study_date_last}"
        if data.study_date_first
        else _NOT_STATED
    )
    lines += [
        f"- Sources: {'; '.join(data.sources) or _NOT_STATED}",
        f"- Study dates: {dates}",
        f"- {data.cases} {data.unit or 'case'}(s) from {data.patients} patient(s)",
        _counts("By manufacturer", data.counts.by_manufacturer),
        _counts("By sex", data.counts.by_sex),
        _counts("By age band", data.counts.by_age_band),
    ]
    if data.positives:
        lines.append(_counts("Positive cases per label", data.positives))
    lines += [f"- How labels were made: {data.labelling or _NOT_STATED}", ""]
    return lines


def _classification_rows(labels: Iterable[dict[str, Any]]) -> list[str]:
    lines = [
        "| label | threshold | n | positives | AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        interval = interval_text(label.get("auc_ci95"), label.get("auc_ci_note"))
        area = f"{fmt(label.get('auc'))} ({interval})"
        lines.append(
            f"| {label['label']} | {fmt(label.get('threshold'), 4)} | {label.get('n')} | "
            f"{label.get('positives')} | {area} | {fmt(label.get('sensitivity'))} | "
            f"{fmt(label.get('specificity'))} |"
        )
    return lines


def _segmentation_rows(labels: Iterable[dict[str, Any]]) -> list[str]:
    lines = [
        "| label | cases | Dice mean | HD95 mean (mm) | HD undefined |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        dice_interval = interval_text(label.get("dice_ci95"), label.get("dice_ci_note"))
        hd95_interval = interval_text(
            label.get("hausdorff95_ci95"), label.get("hausdorff95_ci_note")
        )
        dice = f"{fmt(label.get('dice_mean'))} ({dice_interval})"
        hd95 = f"{fmt(label.get('hausdorff95_mean'))} ({hd95_interval})"
        lines.append(
            f"| {label['label']} | {label.get('n')} | {dice} | {hd95} | "
            f"{label.get('hausdorff_undefined', 0)} |"
        )
    return lines


def _validation(title: str, entry: Validation) -> list[str]:
    about = [f"{entry.cases} case(s)"]
    if entry.method:
        about.append(entry.method)
    if entry.backend:
        about.append(f"backend {entry.backend}")
    if entry.report:
        about.append(f"full report: {entry.report}")
    lines = [f"### {title}: {entry.dataset} ({entry.date})", "", "; ".join(about) + ".", ""]
    segmentation = any("dice_mean" in label for label in entry.labels)
    rows = _segmentation_rows if segmentation else _classification_rows
    return [*lines, *rows(entry.labels), ""]


def _surveillance(plan: SurveillancePlan) -> list[str]:
    return [
        "## Surveillance plan",
        "",
        "After go-live the node compares each model's recent inputs and outputs with the "
        "package's reference profile (`dicom-node drift`, Prometheus `dicom_node_drift`): "
        f"the last {plan.window_studies} studies within {fmt(plan.window_days, 1)} days, "
        f"judged from {plan.min_studies} studies on. Inputs (acquisition attributes, "
        "image statistics) and outputs (scores, volumes) drift when their population "
        f"stability index reaches {fmt(plan.psi_threshold, 2)} or their two-sample test's "
        f"p-value falls below {plan.p_value:g}; each label's positive rate when its exact "
        f"binomial test's p-value does. Thresholds: {plan.source}.",
        "",
    ]


def render_card(card: ModelCard, surveillance: SurveillancePlan | None = None) -> str:
    """The card as Markdown.

    Parameters
    ----------
    card : ModelCard
        The card.
    surveillance : SurveillancePlan, optional
        The plan in force (a node's ``[drift]`` settings) instead of the card's own.

    Returns
    -------
    str
    """
    lines = [f"# Model card: {card.model} {card.version}", ""]
    if card.description:
        lines += [card.description, ""]
    lines += ["## Intended use", "", card.intended_use or _NOT_STATED, ""]
    lines += ["## Known limitations", ""]
    lines += [f"- {item}" for item in card.limitations] or [_NOT_STATED]
    lines.append("")
    origin = card.origin
    if origin is not None:
        lines += [
            "## Origin",
            "",
            f"- {origin.kind} {origin.name} {origin.version}".rstrip(),
            f"- Authors: {', '.join(origin.authors) or _NOT_STATED}",
            f"- Licence: {origin.license or _NOT_STATED}",
            f"- Data source (as its authors state): {origin.data_source or _NOT_STATED}",
            *[f"- Reference: {ref}" for ref in origin.references],
            *[
                f"- Stated by its authors, not measured here: {key} {value}"
                for key, value in origin.stated_metrics.items()
            ],
            "",
        ]
    lines += _training(card.training_data)
    lines += ["## Validation", ""]
    if card.internal_validation is not None:
        lines += _validation("Internal validation", card.internal_validation)
    for entry in card.external_validations:
        lines += _validation("External validation", entry)
    if card.internal_validation is None and not card.external_validations:
        lines += ["None recorded: run `dicom-node evaluate --card` on a labelled set.", ""]
    lines += _surveillance(surveillance or card.surveillance)
    return "\n".join(lines)


__all__ = ["render_card"]
