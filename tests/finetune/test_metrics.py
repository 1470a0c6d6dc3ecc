"""Validation metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.finetune.metrics import (
    auc,
    bootstrap_auc_ci,
    calibration,
    choose_threshold,
    dice,
    hausdorff,
    operating_point,
)


def test_auc_counts_pairs_and_halves_ties() -> None:
    # Pairs (positive, negative): (0.8, 0.1) win, (0.8, 0.4) win, (0.4, 0.1) win,
    # (0.4, 0.4) tie: 3.5 of 4.
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.1, 0.4]) == pytest.approx(3.5 / 4)
    assert auc([1, 0], [0.9, 0.1]) == 1.0
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert math.isnan(auc([1, 1], [0.3, 0.4]))


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.4
    scores = truth * 0.5 + rng.random(200)
    low, high = bootstrap_auc_ci(truth, scores, resamples=300, seed=1)
    assert low < auc(truth, scores) < high
    assert (low, high) == bootstrap_auc_ci(truth, scores, resamples=300, seed=1)


def test_bootstrap_resamples_whole_patients() -> None:
    # Two images per patient, identical: resampling patients keeps pairs together, so
    # the interval is the same as with one image per patient.
    truth = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.2, 0.6, 0.5, 0.7, 0.1, 0.65, 0.3])
    single = bootstrap_auc_ci(truth, scores, resamples=200, seed=3)
    doubled = bootstrap_auc_ci(
        np.repeat(truth, 2),
        np.repeat(scores, 2),
        groups=np.repeat(np.arange(8), 2),
        resamples=200,
        seed=3,
    )
    assert doubled == pytest.approx(single)


def test_operating_point_counts_and_rates() -> None:
    point = operating_point([1, 1, 1, 0, 0], [0.9, 0.6, 0.2, 0.7, 0.1], 0.5)
    assert (point.tp, point.fn, point.fp, point.tn) == (2, 1, 1, 1)
    assert point.sensitivity == pytest.approx(2 / 3)
    assert point.specificity == pytest.approx(1 / 2)
    assert point.confusion == [[1, 1], [1, 2]]
    # One threshold per case (two folds' networks, each at its own threshold), summed.
    per_case = operating_point([1, 0, 1, 0], [0.6, 0.5, 0.3, 0.1], [0.55, 0.55, 0.2, 0.2])
    assert per_case == operating_point([1, 0], [0.6, 0.5], 0.55) + operating_point(
        [1, 0], [0.3, 0.1], 0.2
    )
    assert (per_case.tp, per_case.fp, per_case.tn, per_case.fn) == (2, 0, 2, 0)


def test_thresholds_by_rule_lie_halfway_between_scores() -> None:
    # Youden J: 0.85 -> 0.5, 0.8 -> 0.75 (best), 0.5 -> 0.42, 0.4 -> 0.67. The threshold
    # lies halfway between 0.8 (the lowest score called positive) and 0.5 (the next).
    truth = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.5, 0.3, 0.4, 0.8, 0.9, 0.85]
    assert choose_threshold(truth, scores, "youden") == pytest.approx(0.65)
    assert choose_threshold(truth, scores, "sensitivity:1.0") == pytest.approx(0.35)
    assert choose_threshold(truth, scores, "0.3") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="threshold rule 'best'"):
        choose_threshold(truth, scores, "best")
    assert choose_threshold([1, 1], [0.3, 0.4], "youden") == 0.5  # one class: no choice


def test_threshold_survives_the_exported_graphs_rounding() -> None:
    # Scores computed again by ONNX Runtime in float32 differ by ~1e-7: a threshold on a
    # score would flip that case; one halfway to the next score does not.
    truth = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.20, 0.31, 0.52, 0.77, 0.47, 0.49])
    threshold = choose_threshold(truth, scores, "youden")
    reference = operating_point(truth, scores, threshold)
    for jitter in (-1e-6, 1e-6):
        assert operating_point(truth, scores + jitter, threshold) == reference


def test_calibration_of_a_perfectly_calibrated_split() -> None:
    truth = [0, 0, 0, 1, 1, 1, 1, 0]
    scores = [0.25] * 4 + [0.75] * 4
    result = calibration(truth, scores, bins=4)
    assert [b.mean_predicted for b in result.bins] == [0.25, 0.75]
    assert [b.observed for b in result.bins] == [0.25, 0.75]
    assert [(b.low, b.high, b.count) for b in result.bins] == [(0.25, 0.5, 4), (0.75, 1.0, 4)]
    assert result.empty_bins == 2
    assert result.ece == pytest.approx(0.0)
    assert result.brier == pytest.approx(0.1875)


def test_ece_is_withheld_when_most_bins_are_empty() -> None:
    # Scores bunched in 3 of 10 bins: ECE would measure the binning, not the model.
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.4
    bunched = calibration(truth, rng.choice([0.41, 0.55, 0.62], 60))
    assert bunched.empty_bins == 7 and math.isnan(bunched.ece)
    assert sum(b.count for b in bunched.bins) == 60
    spread = calibration(truth, rng.random(60))
    assert spread.empty_bins <= 5 and not math.isnan(spread.ece)


def test_dice_and_hausdorff_of_shifted_squares() -> None:
    a = np.zeros((20, 20), dtype=bool)
    b = np.zeros((20, 20), dtype=bool)
    a[5:10, 5:10] = True
    b[5:10, 8:13] = True  # shifted 3 columns: overlap 5 x 2
    assert dice(a, b) == pytest.approx(2 * 10 / 50)
    assert hausdorff(a, b) == pytest.approx(3.0)
    assert hausdorff(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.5)
    assert hausdorff(a, np.zeros_like(a)) == math.inf
    assert hausdorff(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
