"""Uncertainty of small validation figures: when an interval can be trusted, and which.

Fine-tuning sets are small, and a fold of a small set is smaller still: an AUC of
1.000 on one positive study says almost nothing, and a percentile bootstrap of it
collapses to "1.000-1.000", which reads as certainty. Three tools, each for what it
does well:

* `class_count_note`: the rule the report applies before printing a bootstrap
  interval (at least `MIN_PER_CLASS` positives and negatives), with the reason
  when it withholds one;
* `cluster_bootstrap`: the percentile bootstrap that resamples whole patients, for
  any statistic (AUC, a subgroup's AUC, the equalized-odds gap);
* `wilson_interval` and `auc_score_interval`: score-type intervals that stay
  honest at any size (they never collapse to a point on 1 of 1), used for
  sensitivity and specificity and for choosing which fold's network to ship.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

MIN_PER_CLASS = 10
Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def class_count_note(positives: int, negatives: int, minimum: int = MIN_PER_CLASS) -> str | None:
    """Why an interval is not estimated from these counts, or ``None`` when it may be.

    Parameters
    ----------
    positives, negatives : int
        Class counts of the data the figure is computed on.
    minimum : int
        Fewest of each class for a bootstrap interval worth printing.

    Returns
    -------
    str or None
        E.g. ``"too few to estimate: 3 positive(s) and 9 negative(s), fewer than
        10 of each"``.
    """
    if positives >= minimum and negatives >= minimum:
        return None
    return (
        f"too few to estimate: {positives} positive(s) and {negatives} negative(s), "
        f"fewer than {minimum} of each"
    )


def cluster_bootstrap(
    statistic: Callable[[IntArray], float],
    groups: npt.ArrayLike,
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic, resampling whole clusters.

    Parameters
    ----------
    statistic : callable
        Takes the indices of one resample (with repeats) and returns the
        statistic, or NaN where it is undefined on that resample (skipped).
    groups : array_like
        Cluster id (the patient) of every item: images or studies of one patient
        are not independent, so they are drawn together.
    resamples : int
        Bootstrap replicates.
    seed : int
        Seed of the resampling, so that reports are reproducible.
    level : float
        Confidence level.

    Returns
    -------
    (low, high)
        NaN, NaN when no resample gave a defined value.
    """
    ids = np.asarray(groups).ravel()
    clusters, inverse = np.unique(ids, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(clusters.size)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picked = rng.integers(0, clusters.size, clusters.size)
        value = statistic(np.concatenate([members[c] for c in picked]).astype(np.int64))
        if not math.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. sensitivity = TP / positives).

    Unlike the Wald interval it is never a single point: 1 of 1 gives 0.21-1.00,
    which says what one positive case can tell.

    Returns
    -------
    (low, high)
        NaN, NaN when there are no trials.
    """
    if trials <= 0:
        return float("nan"), float("nan")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _auc_variance(theta: float, positives: int, negatives: int) -> float:
    """Newcombe's (2006) variance of the Mann-Whitney AUC at a hypothesised value.

    Hanley and McNeil's variance with both group sizes replaced by their mean
    ``N* = (m + n) / 2``: ``theta (1 - theta) / (m n) * (2 N* - 1 - 3 (N* - 1) /
    ((2 - theta) (1 + theta)))``.
    """
    mean_size = (positives + negatives) / 2
    factor = 2 * mean_size - 1 - 3 * (mean_size - 1) / ((2 - theta) * (1 + theta))
    return theta * (1 - theta) / (positives * negatives) * factor


def auc_score_interval(
    value: float, positives: int, negatives: int, z: float = Z95
) -> tuple[float, float]:
    """Score-type interval of an AUC (Newcombe 2006, Stat Med 25:559, method 5 solved
    as a score interval): every ``theta`` with ``(AUC - theta)^2 <= z^2 V(theta)``.

    Evaluating the variance at the hypothesised value, not at the estimate, keeps
    the interval open at AUC 1.000 on a handful of cases, where the Hanley-McNeil
    and bootstrap intervals collapse to a point.

    Parameters
    ----------
    value : float
        The AUC.
    positives, negatives : int
        Class counts it was computed on.
    z : float
        Normal quantile (1.96 for 95%).

    Returns
    -------
    (low, high)
        NaN, NaN when a class is empty or the AUC is NaN.
    """
    if positives <= 0 or negatives <= 0 or math.isnan(value):
        return float("nan"), float("nan")

    def outside(theta: float) -> bool:
        return (value - theta) ** 2 > z * z * _auc_variance(theta, positives, negatives)

    def bound(inner: float, outer: float) -> float:
        # outer lies outside the interval (or is the end of [0, 1]); bisect the edge.
        if not outside(outer):
            return outer
        for _ in range(60):
            middle = (inner + outer) / 2
            if outside(middle):
                outer = middle
            else:
                inner = middle
        return inner

    return bound(value, 0.0), bound(value, 1.0)


__all__ = [
    "MIN_PER_CLASS",
    "auc_score_interval",
    "class_count_note",
    "cluster_bootstrap",
    "wilson_interval",
]
