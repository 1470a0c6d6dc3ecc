"""The model card of a package: ``model_card.md`` for people, ``model_card.json`` for tools.

Regulators ask for validation results on external data next to the model. An external
validation (`inference.finetune.external`) appends its figures to both files: one
entry per evaluation in the JSON (``external_validations``), one section in the
Markdown, so that whatever a person wrote in the card above stays as it was.
``dicom-node models --card NAME`` prints the Markdown.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from inference.atomic_file import atomic_write
from inference.finetune.report import fmt, interval_text

CARD_MD = "model_card.md"
CARD_JSON = "model_card.json"


def _label_entry(label: dict[str, Any]) -> dict[str, Any]:
    (row,) = label["folds"]
    keys = ("threshold", "n", "positives", "auc", "auc_ci95", "sensitivity", "specificity")
    return {
        "label": label["label"],
        **{key: row[key] for key in keys},
        "sensitivity_ci95": row["sensitivity_ci95"],
        "specificity_ci95": row["specificity_ci95"],
    }


def _section(entry: dict[str, Any]) -> str:
    lines = [
        "",
        f"## External validation: {entry['dataset']} ({entry['date']})",
        "",
        f"{entry['cases']} case(s), backend {entry['backend']}, at the package's thresholds; "
        f"full report: {entry['report']}.",
        "",
        "| label | threshold | n | positives | AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in entry["labels"]:
        area = f"{fmt(label['auc'])} ({interval_text(label['auc_ci95'], None)})"
        lines.append(
            f"| {label['label']} | {fmt(label['threshold'], 4)} | {label['n']} | "
            f"{label['positives']} | {area} | {fmt(label['sensitivity'])} | "
            f"{fmt(label['specificity'])} |"
        )
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def record_external_validation(
    package: Path, results: dict[str, Any], run: dict[str, Any], report: Path
) -> dict[str, Any]:
    """Append one external validation to the package's card (both files); the entry.

    Raises
    ------
    OSError
        When the package folder is not writable.
    json.JSONDecodeError
        When an existing ``model_card.json`` is not JSON.
    """
    entry = {
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "dataset": run["dataset"],
        "cases": run["cases"],
        "backend": run["backend"],
        "report": str(report),
        "labels": [_label_entry(label) for label in results["labels"]],
    }
    card_json = package / CARD_JSON
    card: dict[str, Any] = (
        json.loads(card_json.read_text(encoding="utf-8"))
        if card_json.exists()
        else {"model": run["model"], "version": run["version"]}
    )
    card.setdefault("external_validations", []).append(entry)
    _write_text(card_json, json.dumps(card, indent=1))
    card_md = package / CARD_MD
    head = (
        card_md.read_text(encoding="utf-8")
        if card_md.exists()
        else f"# Model card: {run['model']} {run['version']}\n"
    )
    _write_text(card_md, head + _section(entry))
    return entry
