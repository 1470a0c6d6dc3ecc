"""Validation metrics: ROC/AUC with a bootstrap interval, operating point, calibration,
Dice and Hausdorff distance. Plain numpy, so that reports can be rebuilt without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _binary(targets: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[BoolArray, FloatArray]:
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} targets but {s.size} scores")
    return y, s


def auc(targets: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class."""
    y, s = _binary(targets, scores)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_scores = s[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(
    targets: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(false positive rates, true positive rates, thresholds), from (0, 0) to (1, 1)."""
    y, s = _binary(targets, scores)
    thresholds = np.unique(s)[::-1]
    positives, negatives = max(1, int(y.sum())), max(1, int((~y).sum()))
    tpr = [0.0] + [float((s[y] >= t).sum() / positives) for t in thresholds]
    fpr = [0.0] + [float((s[~y] >= t).sum() / negatives) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr), np.concatenate([[np.inf], thresholds])


def bootstrap_auc_ci(
    targets: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    groups: npt.ArrayLike | None = None,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC.

    Parameters
    ----------
    targets, scores : array_like
        Binary truth and scores, one per image.
    groups : array_like, optional
        Cluster id per image (the patient): resampling draws whole patients, since
        images of one patient are not independent.
    level : float
        Confidence level.
    resamples : int
        Bootstrap replicates; those with a single class are skipped.
    seed : int
        Seed of the resampling, so that reports are reproducible.

    Returns
    -------
    (low, high)
        NaN, NaN when the data hold a single class.
    """
    y, s = _binary(targets, scores)
    ids = np.arange(y.size) if groups is None else np.asarray(groups).ravel()
    clusters, inverse = np.unique(ids, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(clusters.size)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picked = rng.integers(0, clusters.size, clusters.size)
        index = np.concatenate([members[c] for c in picked])
        value = auc(y[index], s[index])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at one threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        """True positive rate; NaN without positives."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        """True negative rate; NaN without negatives."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def false_positive_rate(self) -> float:
        """1 - specificity."""
        return 1.0 - self.specificity

    @property
    def confusion(self) -> list[list[int]]:
        """[[TN, FP], [FN, TP]]: rows truth (negative, positive), columns decision."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def operating_point(
    targets: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> OperatingPoint:
    """Confusion counts when scores at or above ``threshold`` are called positive."""
    y, s = _binary(targets, scores)
    called = s >= threshold
    return OperatingPoint(
        threshold=float(threshold),
        tp=int((called & y).sum()),
        fp=int((called & ~y).sum()),
        tn=int((~called & ~y).sum()),
        fn=int((~called & y).sum()),
    )


def choose_threshold(targets: npt.ArrayLike, scores: npt.ArrayLike, rule: str = "youden") -> float:
    """Pick a decision threshold from validation scores.

    Parameters
    ----------
    targets, scores : array_like
    rule : str
        ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity:X``
        (the highest threshold reaching sensitivity X), or a number in (0, 1).

    Returns
    -------
    float
        A threshold in (0, 1) (model.toml's range).

    Raises
    ------
    ValueError
        When the rule does not parse.
    """
    y, s = _binary(targets, scores)
    low, high = 1e-4, 1 - 1e-4
    if rule.replace(".", "", 1).isdigit():
        return float(np.clip(float(rule), low, high))
    if not y.any() or y.all():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    if rule == "youden":
        best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    elif rule.startswith("sensitivity:"):
        try:
            target = float(rule.split(":", 1)[1])
        except ValueError as exc:
            raise ValueError(f"threshold rule {rule!r}: sensitivity must be a number") from exc
        best = int(np.flatnonzero(tpr[1:] >= target)[0]) + 1
    else:
        raise ValueError(f"threshold rule {rule!r}: use youden, sensitivity:X or a number")
    return float(np.clip(thresholds[best], low, high))


@dataclass(frozen=True)
class Calibration:
    """Reliability diagram data: per bin mean score, observed rate and count."""

    mean_predicted: list[float]
    observed: list[float]
    counts: list[int]
    ece: float
    brier: float


def calibration(targets: npt.ArrayLike, scores: npt.ArrayLike, bins: int = 10) -> Calibration:
    """Reliability bins of equal width, expected calibration error and Brier score."""
    y, s = _binary(targets, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    mean_predicted, observed, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count == 0:
            continue
        mean_p, rate = float(s[inside].mean()), float(y[inside].mean())
        mean_predicted.append(mean_p)
        observed.append(rate)
        counts.append(count)
        ece += count / max(1, s.size) * abs(mean_p - rate)
    brier = float(np.mean((s - y) ** 2)) if s.size else float("nan")
    return Calibration(mean_predicted, observed, counts, float(ece), brier)


def dice(truth: npt.ArrayLike, predicted: npt.ArrayLike) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty."""
    a, b = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _boundary(mask: BoolArray) -> BoolArray:
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    neighbours = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner & ~neighbours


def _directed(points: FloatArray, other: FloatArray, chunk: int = 2048) -> FloatArray:
    """For every point, the distance to the nearest point of ``other``."""
    out = np.empty(len(points))
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        d2 = ((block[:, None, :] - other[None, :, :]) ** 2).sum(-1)
        out[start : start + chunk] = np.sqrt(d2.min(axis=1))
    return out


def hausdorff(
    truth: npt.ArrayLike,
    predicted: npt.ArrayLike,
    spacing: tuple[float, float] = (1.0, 1.0),
    percentile: float = 100.0,
) -> float:
    """Symmetric Hausdorff distance between the boundaries of two 2D masks.

    Parameters
    ----------
    truth, predicted : array_like
        Binary masks (rows, columns).
    spacing : (float, float)
        Row and column spacing, so that the distance is in mm where known.
    percentile : float
        100 for the classic (maximum) distance, 95 for the robust HD95.

    Returns
    -------
    float
        0 when both masks are empty, infinity when exactly one is.
    """
    a, b = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"masks must be 2D of one shape, got {a.shape} and {b.shape}")
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    scale = np.asarray(spacing, dtype=np.float64)
    pa = np.argwhere(_boundary(a)) * scale
    pb = np.argwhere(_boundary(b)) * scale
    distances = np.concatenate([_directed(pa, pb), _directed(pb, pa)])
    return float(np.percentile(distances, percentile))
