"""Out-of-fold predictions to the validation results: per fold and pooled, per label,
with subgroups. The result is plain JSON-able data; `report` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.finetune.data import TrainingData
from inference.finetune.metrics import (
    auc,
    bootstrap_auc_ci,
    calibration,
    choose_threshold,
    dice,
    hausdorff,
    operating_point,
    roc_curve,
)
from inference.finetune.subgroups import subgroup_results
from inference.finetune.training import FoldOutcome
from inference.spec import Task

Json = dict[str, Any]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(float(value), 6)


def _classification_block(
    truth: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    patients: Sequence[str],
    threshold: float,
    resamples: int,
    seed: int,
) -> Json:
    point = operating_point(truth, scores, threshold)
    low, high = bootstrap_auc_ci(truth, scores, groups=patients, resamples=resamples, seed=seed)
    fpr, tpr, _ = roc_curve(truth, scores)
    cal = calibration(truth, scores)
    return {
        "n": int(truth.size),
        "positives": int(truth.sum()),
        "auc": _finite(auc(truth, scores)),
        "auc_ci95": [_finite(low), _finite(high)],
        "threshold": round(threshold, 6),
        "sensitivity": _finite(point.sensitivity),
        "specificity": _finite(point.specificity),
        "confusion": point.confusion,
        "roc": {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist()},
        "calibration": {
            "mean_predicted": [round(v, 6) for v in cal.mean_predicted],
            "observed": [round(v, 6) for v in cal.observed],
            "counts": cal.counts,
            "ece": _finite(cal.ece),
            "brier": _finite(cal.brier),
        },
    }


def _subgroups(
    data: TrainingData,
    cases: npt.NDArray[np.int64],
    truth: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    threshold: float,
) -> list[Json]:
    out = []
    for attribute, values in (
        ("sex", [data.cases[c].sex for c in cases]),
        ("age_band", [data.cases[c].age_band for c in cases]),
    ):
        result = subgroup_results(attribute, values, truth, scores, threshold)
        groups = [
            {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(g).items()}
            for g in result.groups
        ]
        out.append(
            {
                "attribute": attribute,
                "groups": groups,
                "equalized_odds_gap": _finite(result.equalized_odds_gap),
            }
        )
    return out


def evaluate_classification(
    data: TrainingData,
    outcomes: Sequence[FoldOutcome],
    threshold_rule: str,
    resamples: int,
    seed: int,
) -> Json:
    """Per label: threshold from the pooled out-of-fold scores, then fold and pooled results."""
    pooled_cases = np.concatenate([o.cases for o in outcomes])
    pooled_scores = np.concatenate([np.asarray(o.scores, dtype=np.float64) for o in outcomes])
    labels: list[Json] = []
    for k, name in enumerate(data.labels):
        truth = np.asarray([data.cases[c].target[k] for c in pooled_cases], dtype=np.float64)
        scores = pooled_scores[:, k]
        threshold = choose_threshold(truth, scores, threshold_rule)
        patients = [data.cases[c].patient for c in pooled_cases]
        pooled = _classification_block(truth, scores, patients, threshold, resamples, seed)
        pooled["subgroups"] = _subgroups(data, pooled_cases, truth, scores, threshold)
        folds = []
        for outcome in outcomes:
            fold_truth = np.asarray(
                [data.cases[c].target[k] for c in outcome.cases], dtype=np.float64
            )
            fold_patients = [data.cases[c].patient for c in outcome.cases]
            block = _classification_block(
                fold_truth,
                np.asarray(outcome.scores, dtype=np.float64)[:, k],
                fold_patients,
                threshold,
                resamples,
                seed,
            )
            folds.append({"fold": outcome.fold, "best_epoch": outcome.best_epoch + 1, **block})
        labels.append(
            {"label": name, "threshold_rule": threshold_rule, "pooled": pooled, "folds": folds}
        )
    return {"task": Task.CLASSIFICATION.value, "level": data.level, "labels": labels}


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
    """Per label: Dice and Hausdorff per fold and pooled, with Dice by sex and age band."""
    images = np.concatenate([o.images for o in outcomes])
    predicted = np.concatenate([np.asarray(o.scores, dtype=np.int64) for o in outcomes])
    labels = []
    for k, name in enumerate(data.labels):
        pooled = _segmentation_block(data, images, predicted, k)
        groups = []
        for attribute in ("sex", "age_band"):
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
                "best_epoch": o.best_epoch + 1,
                **_segmentation_block(data, o.images, np.asarray(o.scores, dtype=np.int64), k),
            }
            for o in outcomes
        ]
        labels.append({"label": name, "pooled": pooled, "folds": folds})
    return {"task": Task.SEGMENTATION.value, "level": "image", "labels": labels}
