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

from inference.figure_format import fmt, interval_text
from inference.finetune.intervals import MIN_PER_CLASS

logger = logging.getLogger(__name__)

Json = dict[str, Any]
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES_JSON = "figures.json"
RESULTS_JSON = "results.json"
# The one "fold" of an external validation: the package as shipped, at its thresholds.
EXTERNAL = "external"


def _interval_cell(interval: list[float] | None, note: str | None) -> str:
    if interval is not None:
        return f"{fmt(interval[0])}-{fmt(interval[1])}"
    return "unreliable, not shown" if note and note.startswith("too few") else "n/a"


def _rate_cell(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{fmt(value)} ({fmt(interval[0], 2)}-{fmt(interval[1], 2)})" if interval else fmt(value)


def _row_name(fold: object) -> str:
    return f"fold {fold}" if isinstance(fold, int) else str(fold)


def _save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path.name


def _shipped(label: Json, fold: int | str) -> Json:
    row: Json = next(f for f in label["folds"] if f["fold"] == fold)
    return row


def _roc_figure(label: Json, shipped: int | str, folder: Path) -> tuple[str, Json]:
    figure = Figure(figsize=(4.5, 4.5))  # no pyplot: no global state
    axes = figure.subplots()
    data: Json = {"pooled": label["pooled"]["roc"], "folds": {}}
    for fold in label["folds"]:
        axes.plot(
            fold["roc"]["fpr"],
            fold["roc"]["tpr"],
            alpha=0.35,
            lw=1,
            label=f"fold {fold['fold']} (AUC {fmt(fold['auc'])}, n {fold['n']})",
        )
        data["folds"][str(fold["fold"])] = fold["roc"]
    pooled = label["pooled"]
    axes.plot(
        pooled["roc"]["fpr"],
        pooled["roc"]["tpr"],
        color="black",
        lw=2,
        label=f"pooled (AUC {fmt(pooled['auc'])})",
    )
    axes.plot([0, 1], [0, 1], ls=":", color="grey")
    row = _shipped(label, shipped)
    if row["sensitivity"] is not None and row["specificity"] is not None:
        axes.scatter(
            [1 - row["specificity"]],
            [row["sensitivity"]],
            color="red",
            zorder=3,
            label=f"shipped: fold {shipped} at {row['threshold']:.3f}",
        )
    data["shipped"] = {"fold": shipped, "threshold": row["threshold"]}
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {label['label']}")
    axes.legend(fontsize=7, loc="lower right")
    return _save(figure, folder / f"roc_{label['label']}.png"), data


def _calibration_figure(label: Json, folder: Path) -> tuple[str, Json]:
    cal = label["pooled"]["calibration"]
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ls=":", color="grey")
    x = [b["mean_predicted"] for b in cal["bins"]]
    y = [b["observed"] for b in cal["bins"]]
    axes.plot(x, y, marker="o")
    for b in cal["bins"]:
        axes.annotate(
            f"n={b['count']}",
            (b["mean_predicted"], b["observed"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
    ece = f"ECE {fmt(cal['ece'])}" if cal["ece"] is not None else "ECE withheld"
    axes.set(
        xlim=(0, 1),
        ylim=(-0.05, 1.05),
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title=f"Calibration: {label['label']} ({ece}; {cal['empty_bins']} of "
        f"{cal['bin_count']} bins empty)",
    )
    axes.title.set_fontsize(8)
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
        "thresholds": "each fold's network at its own threshold",
    }
    return _save(figure, folder / f"confusion_{label['label']}.png"), data


def _dice_figure(label: Json, folder: Path) -> tuple[str, Json]:
    figure = Figure(figsize=(4.5, 3.5))
    axes = figure.subplots()
    axes.hist(label["pooled"]["dice"], bins=20, range=(0, 1))
    axes.set(xlabel="Dice", ylabel="images", title=f"Dice: {label['label']}")
    return _save(figure, folder / f"dice_{label['label']}.png"), {"dice": label["pooled"]["dice"]}


def _label_warnings(label: Json, shipped: int) -> list[str]:
    """Every figure of a label that rests on too few cases, in words."""
    name = label["label"]
    out = []
    for row in [*label["folds"], {"fold": "pooled", **label["pooled"]}]:
        where = f"`{name}` {_row_name(row['fold'])}"
        if row["auc_ci_note"]:
            out.append(f"{where}: AUC interval not shown, {row['auc_ci_note']}.")
        elif row["auc_ci95"] and row["auc_ci95"][0] == row["auc_ci95"][1]:
            out.append(f"{where}: the AUC bootstrap interval collapsed to a point.")
        if row.get("threshold_note"):
            shipped_mark = " (the shipped network)" if row["fold"] == shipped else ""
            out.append(f"{where}{shipped_mark}: threshold {row['threshold_note']}.")
    cal = label["pooled"]["calibration"]
    if cal["ece_note"]:
        out.append(f"`{name}` calibration: ECE {cal['ece_note']}.")
    for attribute in label["pooled"]["subgroups"]:
        small = [g for g in attribute["groups"] if g["auc_note"]]
        if small:
            groups = ", ".join(
                f"{g['group']} ({g['positives']} positive of {g['n']})" for g in small
            )
            out.append(
                f"`{name}` {attribute['attribute']}: subgroup AUC too few to estimate for "
                f"{groups}: fewer than {MIN_PER_CLASS} positives or negatives."
            )
        # One group (a single-vendor set): nothing to compare, nothing to warn about.
        if attribute["gap_note"] and len(attribute["groups"]) > 1:
            out.append(
                f"`{name}` {attribute['attribute']}: equalized-odds gap {attribute['gap_note']}."
            )
    return out


def small_number_warnings(results: Json) -> list[str]:
    """Every figure of the results that rests on too few cases, in words (empty for
    segmentation, whose figures are per image)."""
    if results["task"] != "classification":
        return []
    shipped = results["selection"]["fold"]
    return [w for label in results["labels"] for w in _label_warnings(label, shipped)]


def _classification_section(
    label: Json, level: str, shipped: int, folder: Path, figures: Json
) -> list[str]:
    name, pooled = label["label"], label["pooled"]
    lines = [f"## Label `{name}`", ""]
    if shipped == EXTERNAL:
        lines += [
            f"The package's threshold from its model.toml. Unit: one {level} (highest "
            "series probability, as the node decides). Sensitivity and specificity with "
            f"Wilson 95% intervals; AUC intervals by patient bootstrap, only from "
            f"{MIN_PER_CLASS} positives and {MIN_PER_CLASS} negatives up.",
            "",
        ]
    else:
        lines += [
            f"Each fold's threshold: rule `{label['threshold_rule']}` on that fold network's own "
            f"validation scores. Unit: one {level} (highest image probability). Pooled: the "
            "out-of-fold AUC over all folds, and the decisions of every fold at its own threshold "
            "summed. Sensitivity and specificity with Wilson 95% intervals; AUC intervals by "
            f"patient bootstrap, only from {MIN_PER_CLASS} positives and {MIN_PER_CLASS} "
            "negatives up.",
            "",
        ]
    lines += [
        "| | n | positives | AUC | AUC 95% CI | threshold | sensitivity | specificity "
        "| TN FP FN TP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # An external validation's one row is its pooled row: not printed twice.
    pooled_row = [] if shipped == EXTERNAL else [{"fold": "pooled", "threshold": None, **pooled}]
    for row in [*label["folds"], *pooled_row]:
        cm = row["confusion"]
        mark = " (shipped)" if row["fold"] == shipped else ""
        threshold = fmt(row["threshold"], 4) if row["threshold"] is not None else "per fold"
        lines.append(
            f"| {_row_name(row['fold'])}{mark} | {row['n']} | {row['positives']} | "
            f"{fmt(row['auc'])} | {_interval_cell(row['auc_ci95'], row['auc_ci_note'])} | "
            f"{threshold} | {_rate_cell(row['sensitivity'], row['sensitivity_ci95'])} | "
            f"{_rate_cell(row['specificity'], row['specificity_ci95'])} | "
            f"{cm[0][0]} {cm[0][1]} {cm[1][0]} {cm[1][1]} |"
        )
    if len(label["folds"]) > 1:
        thresholds = [f["threshold"] for f in label["folds"]]
        lines += [
            "",
            f"Mean of the fold AUCs: {fmt(pooled['fold_auc_mean'])}. The pooled AUC ranks the "
            f"scores of {len(thresholds)} different networks together; their scales differ "
            f"(thresholds {min(thresholds):.3f} to {max(thresholds):.3f}), which can pull it "
            "below every fold's own AUC.",
        ]
    cal = pooled["calibration"]
    ece = f"ECE {fmt(cal['ece'])}" if cal["ece"] is not None else f"ECE {cal['ece_note']}"
    lines += [
        "",
        f"### Calibration (pooled): {ece}; Brier {fmt(cal['brier'])}",
        "",
        "| score bin | n | mean predicted | observed positive rate |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} | {fmt(b['mean_predicted'])} | "
        f"{fmt(b['observed'])} |"
        for b in cal["bins"]
    ]
    lines += [
        "",
        f"{cal['empty_bins']} of {cal['bin_count']} bins are empty.",
        "",
        "### Subgroups",
        "",
        "| attribute | group | n | positives | AUC (95% CI) | sensitivity | FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    gaps = []
    for attribute in pooled["subgroups"]:
        for g in attribute["groups"]:
            area = (
                "too few to estimate"
                if g["auc_note"]
                else f"{fmt(g['auc'])} ({_interval_cell(g['auc_ci95'], None)})"
            )
            lines.append(
                f"| {attribute['attribute']} | {g['group']} | {g['n']} | {g['positives']} | "
                f"{area} | {fmt(g['sensitivity'])} | {fmt(g['false_positive_rate'])} |"
            )
        gap = (
            attribute["gap_note"]
            if attribute["gap_note"]
            else f"{fmt(attribute['equalized_odds_gap'])} "
            f"({interval_text(attribute['gap_ci95'], None)})"
        )
        gaps.append(f"{attribute['attribute']}: {gap}")
    lines += ["", f"Equalized-odds gap (max spread of TPR or FPR): {'; '.join(gaps)}.", ""]
    for draw, kind in (
        (lambda lab, fol: _roc_figure(lab, shipped, fol), "roc"),
        (_calibration_figure, "calibration"),
        (_confusion_figure, "confusion"),
    ):
        file, data = draw(label, folder)
        figures[f"{kind}_{name}"] = {"file": file, **data}
        lines.append(f"![{kind} {name}]({file})")
    return [*lines, ""]


def _shipped_section(results: Json) -> list[str]:
    selection = results["selection"]
    fold = selection["fold"]
    if fold == EXTERNAL:
        return _operating_points(
            results,
            fold,
            [
                "## The package at its own operating point",
                "",
                "External validation: the package run exactly as the node runs it (its "
                "preprocessing, its backend), each label decided at the threshold in its "
                "model.toml. Nothing was chosen on these cases, so these figures are an "
                "unbiased estimate for the shipped package on data like this set.",
            ],
        )
    lines = [
        "## Shipped network and its operating point",
        "",
        f"`dicom-node export` ships the network of fold {fold} with its own thresholds. "
        f"Selected: {selection['rule']}. Every fold's threshold is chosen on that fold "
        "network's own validation scores, so the package reproduces the figures below on "
        "that fold's validation set, the data its threshold was chosen on. They flatter it "
        "twice: the threshold was chosen on those cases, and the fold was picked as the best "
        "of several; the pooled and per-fold rows below describe the training procedure, and "
        "only an independent labelled set gives an unbiased figure for the shipped network.",
        "",
        "| fold | validation cases | selection score |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s['fold']}{' (shipped)' if s['fold'] == fold else ''} | {s['cases']} | "
        f"{fmt(s['score'])} |"
        for s in selection["scores"]
    ]
    return _operating_points(results, fold, lines)


def _operating_points(results: Json, fold: int | str, lines: list[str]) -> list[str]:
    """``lines``, then each label's operating point at the shipped fold's threshold."""
    if results["task"] != "classification":
        return [*lines, ""]
    lines = [
        *lines,
        "",
        "| label | threshold | n | positives | sensitivity (95% CI) | specificity (95% CI) "
        "| TN FP FN TP |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in results["labels"]:
        row = _shipped(label, fold)
        cm = row["confusion"]
        lines.append(
            f"| {label['label']} | {fmt(row['threshold'], 4)} | {row['n']} | "
            f"{row['positives']} | {_rate_cell(row['sensitivity'], row['sensitivity_ci95'])} | "
            f"{_rate_cell(row['specificity'], row['specificity_ci95'])} | "
            f"{cm[0][0]} {cm[0][1]} {cm[1][0]} {cm[1][1]} |"
        )
    return [*lines, ""]


def _mean_cell(value: float | None, interval: list[float] | None, note: str | None) -> str:
    """``0.912 (0.880-0.940)``; the mean alone, marked, where the interval is withheld."""
    if value is None:
        return "n/a"
    if interval is None:
        return f"{fmt(value)} (too few for a CI)" if note else fmt(value)
    return f"{fmt(value)} ({fmt(interval[0])}-{fmt(interval[1])})"


def _segmentation_section(
    label: Json, shipped: int | str, folder: Path, figures: Json
) -> list[str]:
    name, pooled = label["label"], label["pooled"]
    unit = pooled["hausdorff_unit"]
    lines = [f"## Label `{name}`", ""]
    if shipped == EXTERNAL:
        lines += [
            "Unit: one series, the node's masks against the SEG on the source slices, in "
            f"the source voxel spacing. Means with patient-bootstrap 95% intervals from "
            f"{MIN_PER_CLASS} cases up; HD95 as MONAI computes it.",
            "",
        ]
    lines += [
        f"| | cases | Dice mean (95% CI) | Dice median | HD95 mean ({unit}, 95% CI) "
        f"| HD max mean ({unit}) | HD undefined |",
        "|---|---|---|---|---|---|---|",
    ]
    pooled_row = [] if shipped == EXTERNAL else [{"fold": "pooled", **pooled}]
    for row in [*label["folds"], *pooled_row]:
        dice_cell = _mean_cell(row["dice_mean"], row.get("dice_ci95"), row.get("dice_ci_note"))
        hd_cell = _mean_cell(
            row["hausdorff95_mean"], row.get("hausdorff95_ci95"), row.get("hausdorff95_ci_note")
        )
        lines.append(
            f"| {_row_name(row['fold'])} | {row['n']} | {dice_cell} | "
            f"{fmt(row['dice_median'])} | {hd_cell} | "
            f"{fmt(row['hausdorff_max_mean'])} | {row['hausdorff_undefined']} |"
        )
    lines += [
        "",
        "HD undefined: one of truth and prediction empty, the other not"
        + (", or the source spacing unknown." if shipped == EXTERNAL else "."),
        "",
        f"| attribute | group | cases | Dice mean | HD95 mean ({unit}) |",
        "|---|---|---|---|---|",
    ]
    for g in pooled["subgroups"]:
        lines.append(
            f"| {g['attribute']} | {g['group']} | {g['n']} | {fmt(g['dice_mean'])} | "
            f"{fmt(g.get('hausdorff95_mean'))} |"
        )
    file, data = _dice_figure(label, folder)
    figures[f"dice_{name}"] = {"file": file, **data}
    return [*lines, "", f"![dice {name}]({file})", ""]


def _case_section(results: Json) -> list[str]:
    """One row per case and label of an external segmentation validation."""
    lines = [
        "## Per case",
        "",
        "| series | sex | age band | manufacturer | label | Dice | HD95 (mm) | HD max (mm) "
        "| truth (ml) | predicted (ml) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["cases"]:
        for name, v in row["labels"].items():
            lines.append(
                f"| {row['case']} | {row['sex']} | {row['age_band']} | {row['manufacturer']} | "
                f"{name} | {fmt(v['dice'])} | {fmt(v['hausdorff95'], 2)} | "
                f"{fmt(v['hausdorff_max'], 2)} | {fmt(v['truth_ml'], 2)} | "
                f"{fmt(v['predicted_ml'], 2)} |"
            )
    return [*lines, ""]


def _skipped_section(run: Json) -> list[str]:
    counts = {kind: n for kind, n in run["skipped"].items() if n}
    lines = ["## Inputs left out", ""]
    if not counts:
        return [*lines, "None.", ""]
    lines += [f"- {kind}: {n}" for kind, n in counts.items()]
    return [*lines, "", "Every item and its reason is listed in `summary.json` (`skipped`).", ""]


def _inline(text: str) -> str:
    """Escaped text with Markdown code spans as ``<code>``, never literal backticks."""
    parts = html.escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans, and no backtick left
        return "".join(parts)
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _to_html(markdown: str, folder: Path) -> str:
    """A minimal Markdown subset (headings, tables, lists, images, paragraphs, code
    spans) to one self-contained HTML page."""
    body: list[str] = []
    table: list[list[str]] = []
    items: list[str] = []

    def flush() -> None:
        if table:
            head, *rows = table
            cells = "".join(f"<th>{_inline(c)}</th>" for c in head)
            body.append(f"<table><tr>{cells}</tr>")
            for row in rows:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            body.append("</table>")
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line.lstrip('# '))}</h{level}>")
        elif line.startswith("![") and "](" in line:
            file = line[line.index("](") + 2 : -1]
            data = base64.b64encode((folder / file).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(file)}" src="data:image/png;base64,{data}">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
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
        What was trained: model name, backbone, initialisation, folds, data summary,
        skipped-input counts.
    folder : pathlib.Path
        Created if needed.

    Returns
    -------
    pathlib.Path
        The Markdown report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shipped = results["selection"]["fold"]
    if shipped == EXTERNAL:
        about = [
            f"External validation of the package `{run['package']}` on `{run['dataset']}`, "
            f"task {results['task']}, backend {run['backend']}; bootstrap seed {run['seed']}.",
        ]
    else:
        about = [
            f"Task {results['task']}, backbone `{run['backbone']}`, initialisation: "
            f"{run['initialisation']}.",
            f"{run['folds']} fold(s), patient-level splits, seed {run['seed']}; "
            f"{run['device']}{' with mixed precision' if run['amp'] else ''}.",
        ]
    lines = [
        f"# Validation report: {run['model']} {run['version']}",
        "",
        *about,
        "",
        "Data: " + "; ".join(line.strip() for line in run["data"].splitlines()) + ".",
        "",
    ]
    figures: Json = {}
    sections: list[str] = [*_skipped_section(run), *_shipped_section(results)]
    for label in results["labels"]:
        if results["task"] == "classification":
            sections += _classification_section(label, results["level"], shipped, folder, figures)
        else:
            sections += _segmentation_section(label, shipped, folder, figures)
    if "cases" in results:
        sections += _case_section(results)
    warnings = small_number_warnings(results)
    if warnings:
        lines += [
            "## Small numbers: figures to read with care",
            "",
            *[f"- {w}" for w in warnings],
            "",
        ]
    markdown = "\n".join([*lines, *sections])
    path = folder / REPORT_MD
    path.write_text(markdown, encoding="utf-8")
    (folder / REPORT_HTML).write_text(_to_html(markdown, folder), encoding="utf-8")
    (folder / FIGURES_JSON).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    (folder / RESULTS_JSON).write_text(
        json.dumps({"run": run, **results, "warnings": warnings}, indent=1), encoding="utf-8"
    )
    logger.info("validation report written to %s", path)
    return path
