"""The validation report: Markdown and a self-contained HTML page, PNG plots, and a
JSON of the data behind every figure, so that the numbers can be re-plotted or
audited without rerunning anything.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

Json = dict[str, Any]
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES_JSON = "figures.json"
RESULTS_JSON = "results.json"


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row_name(fold: object) -> str:
    return f"fold {fold}" if isinstance(fold, int) else str(fold)


def _save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path.name


def _roc_figure(label: Json, folder: Path) -> tuple[str, Json]:
    figure = Figure(figsize=(4.5, 4.5))  # no pyplot: no global state
    axes = figure.subplots()
    data: Json = {"pooled": label["pooled"]["roc"], "folds": {}}
    for fold in label["folds"]:
        axes.plot(
            fold["roc"]["fpr"],
            fold["roc"]["tpr"],
            alpha=0.35,
            lw=1,
            label=f"fold {fold['fold']} (AUC {_fmt(fold['auc'])})",
        )
        data["folds"][str(fold["fold"])] = fold["roc"]
    pooled = label["pooled"]
    axes.plot(
        pooled["roc"]["fpr"],
        pooled["roc"]["tpr"],
        color="black",
        lw=2,
        label=f"pooled (AUC {_fmt(pooled['auc'])})",
    )
    axes.plot([0, 1], [0, 1], ls=":", color="grey")
    axes.scatter(
        [1 - (pooled["specificity"] or 0)],
        [pooled["sensitivity"] or 0],
        color="red",
        zorder=3,
        label=f"threshold {pooled['threshold']:.3f}",
    )
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {label['label']}")
    axes.legend(fontsize=7, loc="lower right")
    return _save(figure, folder / f"roc_{label['label']}.png"), data


def _calibration_figure(label: Json, folder: Path) -> tuple[str, Json]:
    cal = label["pooled"]["calibration"]
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ls=":", color="grey")
    axes.plot(cal["mean_predicted"], cal["observed"], marker="o")
    axes.set(
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title=f"Calibration: {label['label']} (ECE {_fmt(cal['ece'])})",
    )
    return _save(figure, folder / f"calibration_{label['label']}.png"), cal


def _confusion_figure(label: Json, folder: Path) -> tuple[str, Json]:
    matrix = label["pooled"]["confusion"]
    figure = Figure(figsize=(3.8, 3.4))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    for r in range(2):
        for c in range(2):
            axes.text(c, r, str(matrix[r][c]), ha="center", va="center", fontsize=12)
    axes.set_xticks([0, 1], ["negative", "positive"])
    axes.set_yticks([0, 1], ["negative", "positive"])
    axes.set(xlabel="model", ylabel="truth", title=f"Confusion: {label['label']}")
    data = {
        "rows": "truth (negative, positive)",
        "columns": "model",
        "matrix": matrix,
        "threshold": label["pooled"]["threshold"],
    }
    return _save(figure, folder / f"confusion_{label['label']}.png"), data


def _dice_figure(label: Json, folder: Path) -> tuple[str, Json]:
    figure = Figure(figsize=(4.5, 3.5))
    axes = figure.subplots()
    axes.hist(label["pooled"]["dice"], bins=20, range=(0, 1))
    axes.set(xlabel="Dice", ylabel="images", title=f"Dice: {label['label']}")
    return _save(figure, folder / f"dice_{label['label']}.png"), {"dice": label["pooled"]["dice"]}


def _classification_section(label: Json, level: str, folder: Path, figures: Json) -> list[str]:
    name, pooled = label["label"], label["pooled"]
    lines = [f"## Label `{name}`", ""]
    lines += [
        f"Threshold {pooled['threshold']:.4f} (rule `{label['threshold_rule']}`, chosen on the "
        f"pooled out-of-fold scores). Unit: one {level} (highest image probability).",
        "",
        "| | n | positives | AUC | 95% CI | sensitivity | specificity | TN FP FN TP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in [*label["folds"], {"fold": "pooled", **pooled}]:
        ci = row["auc_ci95"]
        cm = row["confusion"]
        lines.append(
            f"| {_row_name(row['fold'])} | {row['n']} | {row['positives']} | {_fmt(row['auc'])} | "
            f"{_fmt(ci[0])}-{_fmt(ci[1])} | {_fmt(row['sensitivity'])} | "
            f"{_fmt(row['specificity'])} | {cm[0][0]} {cm[0][1]} {cm[1][0]} {cm[1][1]} |"
        )
    cal = pooled["calibration"]
    lines += ["", f"Calibration: ECE {_fmt(cal['ece'])}, Brier {_fmt(cal['brier'])}.", ""]
    lines += [
        "### Subgroups",
        "",
        "| attribute | group | n | positives | AUC | sensitivity | FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    gaps = []
    for attribute in pooled["subgroups"]:
        for g in attribute["groups"]:
            lines.append(
                f"| {attribute['attribute']} | {g['group']} | {g['n']} | {g['positives']} | "
                f"{_fmt(g['auc'])} | {_fmt(g['sensitivity'])} | {_fmt(g['false_positive_rate'])} |"
            )
        gaps.append(f"{attribute['attribute']}: {_fmt(attribute['equalized_odds_gap'])}")
    lines += ["", f"Equalized-odds gap (max spread of TPR or FPR): {'; '.join(gaps)}.", ""]
    for draw, kind in (
        (_roc_figure, "roc"),
        (_calibration_figure, "calibration"),
        (_confusion_figure, "confusion"),
    ):
        file, data = draw(label, folder)
        figures[f"{kind}_{name}"] = {"file": file, **data}
        lines.append(f"![{kind} {name}]({file})")
    return [*lines, ""]


def _segmentation_section(label: Json, folder: Path, figures: Json) -> list[str]:
    name, pooled = label["label"], label["pooled"]
    unit = pooled["hausdorff_unit"]
    lines = [
        f"## Label `{name}`",
        "",
        f"| | images | Dice mean | Dice median | HD95 mean ({unit}) | HD max mean ({unit}) "
        "| HD undefined |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in [*label["folds"], {"fold": "pooled", **pooled}]:
        lines.append(
            f"| {_row_name(row['fold'])} | {row['n']} | {_fmt(row['dice_mean'])} | "
            f"{_fmt(row['dice_median'])} | {_fmt(row['hausdorff95_mean'])} | "
            f"{_fmt(row['hausdorff_max_mean'])} | {row['hausdorff_undefined']} |"
        )
    lines += [
        "",
        "HD undefined: one of truth and prediction empty, the other not.",
        "",
        "| attribute | group | images | Dice mean |",
        "|---|---|---|---|",
    ]
    for g in pooled["subgroups"]:
        lines.append(f"| {g['attribute']} | {g['group']} | {g['n']} | {_fmt(g['dice_mean'])} |")
    file, data = _dice_figure(label, folder)
    figures[f"dice_{name}"] = {"file": file, **data}
    return [*lines, "", f"![dice {name}]({file})", ""]


def _to_html(markdown: str, folder: Path) -> str:
    """A minimal Markdown subset (headings, tables, images, paragraphs) to one HTML page."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *rows = table
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            body.append(f"<table><tr>{cells}</tr>")
            for row in rows:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            body.append("</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("![") and "](" in line:
            file = line[line.index("](") + 2 : -1]
            data = base64.b64encode((folder / file).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(file)}" src="data:image/png;base64,{data}">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Validation report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(results: Json, run: Json, folder: Path) -> Path:
    """Write ``report.md``, ``report.html``, the PNG plots and ``figures.json``.

    Parameters
    ----------
    results : dict
        From `evaluate_classification` or `evaluate_segmentation`.
    run : dict
        What was trained: model name, backbone, initialisation, folds, data summary.
    folder : pathlib.Path
        Created if needed.

    Returns
    -------
    pathlib.Path
        The Markdown report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    init = run["initialisation"]
    lines = [
        f"# Validation report: {run['model']} {run['version']}",
        "",
        f"Task {results['task']}, backbone `{run['backbone']}`, initialisation: {init}.",
        f"{run['folds']} fold(s), patient-level splits, seed {run['seed']}; "
        f"{run['device']}{' with mixed precision' if run['amp'] else ''}.",
        "",
        "Data: " + "; ".join(line.strip() for line in run["data"].splitlines()) + ".",
        "",
    ]
    figures: Json = {}
    for label in results["labels"]:
        if results["task"] == "classification":
            lines += _classification_section(label, results["level"], folder, figures)
        else:
            lines += _segmentation_section(label, folder, figures)
    markdown = "\n".join(lines)
    path = folder / REPORT_MD
    path.write_text(markdown, encoding="utf-8")
    (folder / REPORT_HTML).write_text(_to_html(markdown, folder), encoding="utf-8")
    (folder / FIGURES_JSON).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    (folder / RESULTS_JSON).write_text(
        json.dumps({"run": run, **results}, indent=1), encoding="utf-8"
    )
    logger.info("validation report written to %s", path)
    return path
