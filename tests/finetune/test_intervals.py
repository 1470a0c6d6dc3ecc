"""Small-sample intervals: the reliability rule, the patient bootstrap, Wilson and the
AUC score interval that selects the fold to ship."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.finetune.intervals import (
    auc_score_interval,
    class_count_note,
    cluster_bootstrap,
    wilson_interval,
)
from inference.finetune.metrics import auc, bootstrap_auc_ci


def test_intervals_need_ten_of_each_class() -> None:
    assert class_count_note(10, 10) is None
    assert class_count_note(9, 40) == (
        "too few to estimate: 9 positive(s) and 40 negative(s), fewer than 10 of each"
    )
    assert class_count_note(30, 0) is not None


def test_a_tiny_perfect_set_gives_a_degenerate_bootstrap_but_an_honest_score_interval() -> None:
    # One positive above two negatives: the bootstrap can only ever see AUC 1.
    truth, scores = [1, 0, 0], [0.9, 0.2, 0.1]
    assert bootstrap_auc_ci(truth, scores, resamples=200) == (1.0, 1.0)
    low, high = auc_score_interval(1.0, 1, 2)
    assert high == 1.0 and 0.2 < low < 0.4


def test_auc_score_interval_is_wilson_for_one_of_each_and_narrows_with_size() -> None:
    # With m = n = 1 the AUC is a single Bernoulli outcome and Newcombe's variance is
    # theta (1 - theta): the score interval is Wilson's.
    assert auc_score_interval(1.0, 1, 1) == pytest.approx(wilson_interval(1, 1), abs=1e-9)
    widths = [np.subtract(*auc_score_interval(0.85, n, n)[::-1]) for n in (5, 20, 80)]
    assert widths[0] > widths[1] > widths[2] > 0
    low, high = auc_score_interval(0.85, 20, 20)
    assert low < 0.85 < high
    assert all(math.isnan(v) for v in auc_score_interval(0.7, 0, 5))


def test_auc_score_interval_agrees_with_the_bootstrap_on_a_large_set() -> None:
    rng = np.random.default_rng(2)
    truth = rng.random(400) < 0.5
    scores = truth * 0.8 + rng.normal(size=400)
    value = auc(truth, scores)
    score = auc_score_interval(value, int(truth.sum()), int((~truth).sum()))
    boot = bootstrap_auc_ci(truth, scores, resamples=400, seed=0)
    assert score == pytest.approx(boot, abs=0.02)


def test_wilson_interval() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 4)[0] == 0.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_cluster_bootstrap_draws_whole_clusters() -> None:
    # Items 0, 1 are one patient, 2, 3 another: drawn together, both members of a
    # patient appear equally often in every resample; drawn one by one, they would not.
    def pairs_intact(index: np.ndarray) -> float:
        counts = np.bincount(index, minlength=4)
        return float(np.array_equal(counts[0::2], counts[1::2]))

    assert cluster_bootstrap(pairs_intact, [7, 7, 9, 9], resamples=50, seed=0) == (1.0, 1.0)
    assert cluster_bootstrap(pairs_intact, [0, 1, 2, 3], resamples=50, seed=0)[0] == 0.0
