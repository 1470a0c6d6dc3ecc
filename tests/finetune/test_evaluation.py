"""Out-of-fold results and their report, on made-up scores (no training): each fold's
threshold is its own, the shipped fold is not a small fold's luck, and the report warns
in words where, and only where, its numbers are small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.finetune.data import Case, SkippedInputs, TrainingData
from inference.finetune.evaluation import evaluate_classification
from inference.finetune.metrics import operating_point
from inference.finetune.report import write_report
from inference.finetune.training import FoldOutcome
from inference.spec import Task


def _data(truth: np.ndarray, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    cases = [
        Case(
            key=f"1.2.{i}",
            patient=f"P{i}",
            sex=str(rng.choice(["F", "M"])),
            age_band=str(rng.choice(["18-64", "65+"])),
            target=(float(t),),
            manufacturer="VendorA" if i % 2 else "VendorB",
        )
        for i, t in enumerate(truth)
    ]
    n = len(cases)
    return TrainingData(
        task=Task.CLASSIFICATION,
        labels=("finding",),
        level="study",
        cases=cases,
        images=np.zeros((n, 1, 2, 2), dtype=np.float32),
        targets=truth.astype(np.float32)[:, None],
        case_of=np.arange(n, dtype=np.int64),
        spacing=np.ones((n, 2)),
        skipped=SkippedInputs(),
    )


def _outcome(fold: int, cases: np.ndarray, scores: np.ndarray) -> FoldOutcome:
    return FoldOutcome(
        fold, 3, 0.5, 5, cases.astype(np.int64), cases.astype(np.int64), scores[:, None]
    )


def _run(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "m",
        "version": "1",
        "backbone": "resnet18",
        "initialisation": "random (no pretrained weights given)",
        "folds": len(results["labels"][0]["folds"]),
        "seed": 0,
        "device": "cpu",
        "amp": False,
        "data": "made up",
        "skipped": SkippedInputs().counts(),
    }


def test_each_fold_keeps_its_own_threshold_and_the_pooled_row_sums_their_decisions() -> None:
    # Two networks whose scores live on different scales: a threshold from the pooled
    # scores would call every case of the low-scoring network negative.
    rng = np.random.default_rng(1)
    truth = (rng.random(80) < 0.5).astype(float)
    low = truth[:40] * 0.05 + rng.random(40) * 0.1  # fold 1: scores in 0-0.15
    high = 0.8 + truth[40:] * 0.05 + rng.random(40) * 0.1  # fold 2: scores in 0.8-0.95
    data = _data(truth)
    first, second = np.arange(40), np.arange(40, 80)
    results = evaluate_classification(
        data, [_outcome(1, first, low), _outcome(2, second, high)], "youden", 50, 0
    )
    label = results["labels"][0]
    folds = {f["fold"]: f for f in label["folds"]}
    assert folds[1]["threshold"] < 0.15 < 0.8 < folds[2]["threshold"]
    for fold, cases, scores in ((1, first, low), (2, second, high)):
        point = operating_point(truth[cases], scores, folds[fold]["threshold"])
        assert folds[fold]["confusion"] == point.confusion
        assert folds[fold]["sensitivity"] > 0.5  # each network flags findings at its own
    pooled = np.add(folds[1]["confusion"], folds[2]["confusion"]).tolist()
    assert label["pooled"]["confusion"] == pooled
    # Ranked together, the two scales pull the pooled AUC below both networks' own.
    assert label["pooled"]["auc"] < min(folds[1]["auc"], folds[2]["auc"])
    assert label["pooled"]["fold_auc_mean"] == pytest.approx(
        (folds[1]["auc"] + folds[2]["auc"]) / 2
    )


def test_a_lucky_tiny_fold_is_not_the_one_shipped() -> None:
    # Fold 1: three studies, one positive ranked first (AUC 1.000 by luck); fold 2: 40
    # studies, AUC about 0.9. Ranking by AUC (or by the early-stopping metric) ships fold 1.
    rng = np.random.default_rng(3)
    tiny_truth = np.array([1.0, 0.0, 0.0])
    big_truth = (np.arange(40) % 2).astype(float)
    truth = np.concatenate([tiny_truth, big_truth])
    tiny = np.array([0.9, 0.3, 0.2])
    big = big_truth * 0.35 + rng.random(40) * 0.6
    outcomes = [_outcome(1, np.arange(3), tiny), _outcome(2, np.arange(3, 43), big)]
    results = evaluate_classification(_data(truth), outcomes, "youden", 50, 0)
    folds = {f["fold"]: f for f in results["labels"][0]["folds"]}
    assert folds[1]["auc"] == 1.0 > folds[2]["auc"] > 0.8
    assert results["selection"]["fold"] == 2
    scores = {s["fold"]: s["score"] for s in results["selection"]["scores"]}
    assert scores[2] > scores[1] == pytest.approx(folds[1]["auc_lower_bound"])


def test_small_numbers_are_marked_and_large_ones_are_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for n, small in ((16, True), (400, False)):
        truth = (np.arange(n) % 3 == 0).astype(float)
        scores = np.clip(truth * 0.3 + rng.random(n) * 0.7, 0, 1)
        halves = np.arange(n) % 2
        outcomes = [
            _outcome(k + 1, np.flatnonzero(halves == k), scores[halves == k]) for k in range(2)
        ]
        results = evaluate_classification(_data(truth, seed=n), outcomes, "youden", 200, 0)
        folder = tmp_path / str(n)
        report = write_report(results, _run(results), folder)
        text = report.read_text(encoding="utf-8")
        saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        label = results["labels"][0]
        pooled = label["pooled"]
        html = (folder / "report.html").read_text(encoding="utf-8")
        assert "`" not in html and "<code>finding</code>" in html
        if small:
            assert pooled["auc_ci95"] is None
            assert pooled["auc_ci_note"] == (
                "too few to estimate: 6 positive(s) and 10 negative(s), fewer than 10 of each"
            )
            assert "| pooled | 16 | 6 |" in text and "unreliable, not shown" in text
            assert all(g["auc_note"] for a in pooled["subgroups"] for g in a["groups"])
            assert all(a["gap_note"] for a in pooled["subgroups"])
            assert "## Small numbers: figures to read with care" in text
            assert any("pooled: AUC interval not shown" in w for w in saved["warnings"])
            assert any("threshold chosen on" in w for w in saved["warnings"])
        else:
            low, high = pooled["auc_ci95"]
            assert low < pooled["auc"] < high
            assert all(f["auc_ci95"] is not None for f in label["folds"])
            assert all(a["gap_ci95"] is not None for a in pooled["subgroups"])
            assert pooled["calibration"]["ece"] is not None
            assert saved["warnings"] == [] and "Small numbers" not in text
            assert f"| pooled | {n} | {int(truth.sum())} | {pooled['auc']:.3f} | " in text
        vendors = next(a for a in pooled["subgroups"] if a["attribute"] == "manufacturer")
        assert [g["group"] for g in vendors["groups"]] == ["VendorA", "VendorB"]
        assert sum(g["n"] for g in vendors["groups"]) == n
        assert "| manufacturer | VendorA |" in text
        # Every calibration bin is listed with its count.
        for b in pooled["calibration"]["bins"]:
            assert f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} |" in text


def test_ece_is_withheld_in_the_report_when_most_bins_are_empty(tmp_path: Path) -> None:
    truth = (np.arange(40) % 2).astype(float)
    scores = np.where(truth > 0, 0.61, 0.42) + np.arange(40) * 1e-4  # two bins only
    outcomes = [
        _outcome(1, np.arange(20), scores[:20]),
        _outcome(2, np.arange(20, 40), scores[20:]),
    ]
    results = evaluate_classification(_data(truth), outcomes, "youden", 50, 0)
    report = write_report(results, _run(results), tmp_path)
    calibration = results["labels"][0]["pooled"]["calibration"]
    assert calibration["ece"] is None and calibration["empty_bins"] == 8
    assert "ECE withheld: 8 of 10 bins are empty" in report.read_text(encoding="utf-8")
