"""Out-of-fold predictions to the validation results: per fold and pooled, per label,
with subgroups. The result is plain JSON-able data; `report` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.finetune.case_attributes import SUBGROUP_ATTRIBUTES
from inference.finetune.data import TrainingData
from inference.finetune.intervals import (
    MIN_PER_CLASS,
    auc_score_interval,
    class_count_note,
    wilson_interval,
)
from inference.finetune.metrics import (
    OperatingPoint,
    auc,
    bootstrap_auc_ci,
    calibration,
    choose_threshold,
    dice,
    hausdorff,
    is_fixed_threshold,
    operating_point,
    roc_curve,
)
from inference.finetune.selection import (
    CLASSIFICATION_RULE,
    SEGMENTATION_RULE,
    FoldScore,
    classification_score,
    segmentation_score,
    select_fold,
)
from inference.finetune.subgroups import subgroup_results
from inference.finetune.training import FoldOutcome
from inference.spec import Task

Json = dict[str, Any]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(float(value), 6)


def _pair(values: tuple[float, float]) -> list[float | None] | None:
    low, high = values
    return None if math.isnan(low) or math.isnan(high) else [_finite(low), _finite(high)]


def _auc_block(
    truth: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    patients: Sequence[str],
    resamples: int,
    seed: int,
) -> Json:
    """AUC with a patient-bootstrap interval, or the reason it is not estimated."""
    positives = int(truth.sum())
    negatives = int(truth.size - positives)
    note = class_count_note(positives, negatives)
    interval = None
    if note is None:
        interval = _pair(
            bootstrap_auc_ci(truth, scores, groups=patients, resamples=resamples, seed=seed)
        )
    return {
        "n": int(truth.size),
        "positives": positives,
        "negatives": negatives,
        "auc": _finite(auc(truth, scores)),
        "auc_ci95": interval,
        "auc_ci_note": note,
    }


def _rates(point: OperatingPoint) -> Json:
    """Sensitivity and specificity with their Wilson intervals, and the confusion matrix."""
    return {
        "sensitivity": _finite(point.sensitivity),
        "sensitivity_ci95": _pair(wilson_interval(point.tp, point.positives)),
        "specificity": _finite(point.specificity),
        "specificity_ci95": _pair(wilson_interval(point.tn, point.negatives)),
        "confusion": point.confusion,
    }


def _calibration(truth: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> Json:
    cal = calibration(truth, scores)
    return {
        "bins": [
            {
                "low": round(b.low, 6),
                "high": round(b.high, 6),
                "count": b.count,
                "mean_predicted": round(b.mean_predicted, 6),
                "observed": round(b.observed, 6),
            }
            for b in cal.bins
        ],
        "bin_count": cal.bin_count,
        "empty_bins": cal.empty_bins,
        "ece": _finite(cal.ece),
        "ece_note": (
            None
            if not math.isnan(cal.ece)
            else f"withheld: {cal.empty_bins} of {cal.bin_count} bins are empty"
        ),
        "brier": _finite(cal.brier),
    }


def _threshold_note(positives: int, negatives: int, rule: str) -> str | None:
    """Why a threshold chosen on these counts is not to be trusted, or ``None``."""
    if is_fixed_threshold(rule):
        return None
    if positives == 0 or negatives == 0:
        return f"no {'positive' if positives == 0 else 'negative'} case to choose on: 0.5"
    if class_count_note(positives, negatives) is None:
        return None
    return (
        f"chosen on only {positives} positive(s) and {negatives} negative(s) (fewer than "
        f"{MIN_PER_CLASS} of each): on other data it may sit far from this"
    )


def _fold_block(
    truth: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    patients: Sequence[str],
    rule: str,
    resamples: int,
    seed: int,
) -> Json:
    """One fold's network on its own validation set, at a threshold chosen there."""
    threshold = choose_threshold(truth, scores, rule)
    block = _auc_block(truth, scores, patients, resamples, seed)
    low, _ = auc_score_interval(auc(truth, scores), block["positives"], block["negatives"])
    return {
        **block,
        "auc_lower_bound": _finite(low),
        "threshold": threshold,  # unrounded: export writes this very value
        "threshold_note": _threshold_note(block["positives"], block["negatives"], rule),
        **_rates(operating_point(truth, scores, threshold)),
        "roc": _roc(truth, scores),
    }


def _roc(truth: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> Json:
    fpr, tpr, _ = roc_curve(truth, scores)
    return {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist()}


def _subgroups(
    data: TrainingData,
    cases: npt.NDArray[np.int64],
    truth: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    thresholds: npt.NDArray[np.float64],
    resamples: int,
    seed: int,
) -> list[Json]:
    patients = [data.cases[c].patient for c in cases]
    out = []
    for attribute in SUBGROUP_ATTRIBUTES:
        values = [getattr(data.cases[c], attribute) for c in cases]
        result = subgroup_results(
            attribute, values, truth, scores, thresholds, patients, resamples, seed
        )
        groups = [
            {
                "group": g.group,
                "n": g.n,
                "positives": g.positives,
                "auc": _finite(g.auc),
                "auc_ci95": None if g.auc_ci95 is None else _pair(g.auc_ci95),
                "auc_note": g.note,
                "sensitivity": _finite(g.sensitivity),
                "false_positive_rate": _finite(g.false_positive_rate),
            }
            for g in result.groups
        ]
        out.append(
            {
                "attribute": attribute,
                "groups": groups,
                "equalized_odds_gap": _finite(result.equalized_odds_gap),
                "gap_ci95": None if result.gap_ci95 is None else _pair(result.gap_ci95),
                "gap_note": result.gap_note,
            }
        )
    return out


def _truth(data: TrainingData, cases: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    return np.asarray([data.cases[c].target for c in cases], dtype=np.float64)


def evaluate_classification(
    data: TrainingData,
    outcomes: Sequence[FoldOutcome],
    threshold_rule: str | Sequence[str],
    resamples: int,
    seed: int,
) -> Json:
    """Per fold, per label: a threshold chosen on the fold network's own validation
    scores and its operating point there; pooled: the out-of-fold AUC, the summed
    decisions of every fold at its own threshold, calibration and subgroups; and
    the fold whose network is shipped (`select_fold`).

    ``threshold_rule`` is one rule for every label, or one per label (an external
    validation gives each label its package threshold as a number).
    """
    rules = (
        [threshold_rule] * len(data.labels)
        if isinstance(threshold_rule, str)
        else list(threshold_rule)
    )
    if len(rules) != len(data.labels):
        raise ValueError(f"{len(rules)} threshold rules for {len(data.labels)} labels")
    pooled_cases = np.concatenate([o.cases for o in outcomes])
    pooled_scores = np.concatenate([np.asarray(o.scores, dtype=np.float64) for o in outcomes])
    patients = [data.cases[c].patient for c in pooled_cases]
    fold_blocks = {
        o.fold: [
            _fold_block(
                _truth(data, o.cases)[:, k],
                np.asarray(o.scores, dtype=np.float64)[:, k],
                [data.cases[c].patient for c in o.cases],
                rules[k],
                resamples,
                seed,
            )
            for k in range(len(data.labels))
        ]
        for o in outcomes
    }
    labels: list[Json] = []
    for k, name in enumerate(data.labels):
        truth = _truth(data, pooled_cases)[:, k]
        scores = pooled_scores[:, k]
        per_case = np.concatenate(
            [np.full(o.cases.size, fold_blocks[o.fold][k]["threshold"]) for o in outcomes]
        )
        pooled = {
            **_auc_block(truth, scores, patients, resamples, seed),
            **_rates(operating_point(truth, scores, per_case)),
            "roc": _roc(truth, scores),
            "calibration": _calibration(truth, scores),
            "subgroups": _subgroups(data, pooled_cases, truth, scores, per_case, resamples, seed),
        }
        folds = [
            {"fold": o.fold, "best_epoch": o.best_epoch, **fold_blocks[o.fold][k]} for o in outcomes
        ]
        defined = [f["auc"] for f in folds if f["auc"] is not None]
        pooled["fold_auc_mean"] = _finite(float(np.mean(defined))) if defined else None
        labels.append({"label": name, "threshold_rule": rules[k], "pooled": pooled, "folds": folds})
    ranking = [
        FoldScore(
            o.fold,
            classification_score(_truth(data, o.cases), np.asarray(o.scores, dtype=np.float64)),
            int(o.cases.size),
        )
        for o in outcomes
    ]
    return {
        "task": Task.CLASSIFICATION.value,
        "level": data.level,
        "labels": labels,
        "selection": _selection(ranking, CLASSIFICATION_RULE),
    }


def _selection(ranking: Sequence[FoldScore], rule: str) -> Json:
    chosen = select_fold(ranking)
    return {
        "rule": rule,
        "fold": chosen.fold,
        "scores": [{"fold": r.fold, "score": round(r.score, 6), "cases": r.cases} for r in ranking],
    }


def _segmentation_block(
    data: TrainingData, images: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], k: int
) -> Json:
    dices, hd95, hdmax = [], [], []
    for i, prediction in zip(images, predicted, strict=True):
        truth = data.targets[i] == k + 1
        mine = prediction == k + 1
        spacing = tuple(data.spacing[i]) if not np.isnan(data.spacing[i]).any() else (1.0, 1.0)
        dices.append(dice(truth, mine))
        hd95.append(hausdorff(truth, mine, spacing, 95.0))
        hdmax.append(hausdorff(truth, mine, spacing))
    finite95 = [v for v in hd95 if math.isfinite(v)]
    finite = [v for v in hdmax if math.isfinite(v)]
    return {
        "n": len(images),
        "dice_mean": _finite(float(np.mean(dices))),
        "dice_median": _finite(float(np.median(dices))),
        "dice": [round(v, 6) for v in dices],
        "hausdorff95_mean": _finite(float(np.mean(finite95))) if finite95 else None,
        "hausdorff_max_mean": _finite(float(np.mean(finite))) if finite else None,
        "hausdorff_undefined": len(hdmax) - len(finite),
        "hausdorff_unit": "mm" if not np.isnan(data.spacing[images]).any() else "px",
    }


def evaluate_segmentation(data: TrainingData, outcomes: Sequence[FoldOutcome]) -> Json:
    """Per label: Dice and Hausdorff per fold and pooled, with Dice by sex, age band and
    manufacturer."""
    images = np.concatenate([o.images for o in outcomes])
    predicted = np.concatenate([np.asarray(o.scores, dtype=np.int64) for o in outcomes])
    labels: list[Json] = []
    for k, name in enumerate(data.labels):
        pooled = _segmentation_block(data, images, predicted, k)
        groups = []
        for attribute in SUBGROUP_ATTRIBUTES:
            values = [getattr(data.cases[data.case_of[i]], attribute) for i in images]
            for group in sorted(set(values)):
                inside = [d for d, v in zip(pooled["dice"], values, strict=True) if v == group]
                groups.append(
                    {
                        "attribute": attribute,
                        "group": group,
                        "n": len(inside),
                        "dice_mean": _finite(float(np.mean(inside))),
                    }
                )
        pooled["subgroups"] = groups
        folds = [
            {
                "fold": o.fold,
                "best_epoch": o.best_epoch,
                **_segmentation_block(data, o.images, np.asarray(o.scores, dtype=np.int64), k),
            }
            for o in outcomes
        ]
        labels.append({"label": name, "pooled": pooled, "folds": folds})
    ranking = []
    for position, o in enumerate(outcomes):
        per_label = []
        for label in labels:
            dices = np.asarray(label["folds"][position]["dice"])
            case_of = data.case_of[o.images]
            per_label.append(
                segmentation_score([float(dices[case_of == c].mean()) for c in np.unique(case_of)])
            )
        ranking.append(FoldScore(o.fold, float(np.mean(per_label)), int(o.cases.size)))
    return {
        "task": Task.SEGMENTATION.value,
        "level": "image",
        "labels": labels,
        "selection": _selection(ranking, SEGMENTATION_RULE),
    }
