"""Validation metrics: ROC/AUC with a bootstrap interval, operating point, calibration,
Dice and Hausdorff distance. Plain numpy, so that reports can be rebuilt without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.finetune.intervals import cluster_bootstrap

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
    ids = np.arange(y.size) if groups is None else groups
    return cluster_bootstrap(
        lambda index: auc(y[index], s[index]), ids, resamples=resamples, seed=seed, level=level
    )


@dataclass(frozen=True)
class OperatingPoint:
    """Decision counts and rates (at one threshold, or at one threshold per case)."""

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
    def positives(self) -> int:
        """Cases that are truly positive."""
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        """Cases that are truly negative."""
        return self.tn + self.fp

    def __add__(self, other: OperatingPoint) -> OperatingPoint:
        """Counts of two disjoint sets together (e.g. folds, each at its own threshold)."""
        return OperatingPoint(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn
        )

    @property
    def confusion(self) -> list[list[int]]:
        """[[TN, FP], [FN, TP]]: rows truth (negative, positive), columns decision."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def decision_counts(targets: npt.ArrayLike, called: npt.ArrayLike) -> OperatingPoint:
    """Confusion counts of given decisions (True: called positive)."""
    y, c = _binary(targets, called)
    decided = c.astype(bool)
    return OperatingPoint(
        tp=int((decided & y).sum()),
        fp=int((decided & ~y).sum()),
        tn=int((~decided & ~y).sum()),
        fn=int((~decided & y).sum()),
    )


def operating_point(
    targets: npt.ArrayLike, scores: npt.ArrayLike, threshold: npt.ArrayLike
) -> OperatingPoint:
    """Confusion counts when scores at or above the threshold are called positive.

    ``threshold`` is one number, or one per case (cases of several folds, each
    decided by its own network's threshold). At or above, as the node decides.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    return decision_counts(targets, s >= np.asarray(threshold, dtype=np.float64).ravel())


def is_fixed_threshold(rule: str) -> bool:
    """Whether a threshold rule is a number (used as given) rather than a rule."""
    return rule.replace(".", "", 1).isdigit()


def choose_threshold(targets: npt.ArrayLike, scores: npt.ArrayLike, rule: str = "youden") -> float:
    """Pick a decision threshold from validation scores.

    The threshold lies halfway between the lowest score called positive and the
    next lower score, not on a score: the exported graph computes the scores again
    (ONNX Runtime, float32), and a case sitting exactly on the threshold would flip
    on a difference of 1e-7, so that the package would not reproduce the
    operating point it was chosen for.

    Parameters
    ----------
    targets, scores : array_like
    rule : str
        ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity:X``
        (the highest threshold reaching sensitivity X), or a number in (0, 1).

    Returns
    -------
    float
        A threshold in (0, 1) (model.toml's range); 0.5 when the scores hold a
        single class and the rule needs both.

    Raises
    ------
    ValueError
        When the rule does not parse.
    """
    y, s = _binary(targets, scores)
    low, high = 1e-4, 1 - 1e-4
    if is_fixed_threshold(rule):
        return float(np.clip(float(rule), low, high))
    if rule != "youden" and not rule.startswith("sensitivity:"):
        raise ValueError(f"threshold rule {rule!r}: use youden, sensitivity:X or a number")
    if not y.any() or y.all():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    if rule == "youden":
        best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    else:
        try:
            target = float(rule.split(":", 1)[1])
        except ValueError as exc:
            raise ValueError(f"threshold rule {rule!r}: sensitivity must be a number") from exc
        best = int(np.flatnonzero(tpr[1:] >= target)[0]) + 1
    below = thresholds[best + 1] if best + 1 < thresholds.size else 0.0
    return float(np.clip((thresholds[best] + below) / 2, low, high))


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a reliability diagram: its score range, count and rates."""

    low: float
    high: float
    count: int
    mean_predicted: float
    observed: float


@dataclass(frozen=True)
class Calibration:
    """Reliability diagram data (non-empty bins), the number of bins, ECE and Brier.

    ``ece`` is NaN when more than half of the bins are empty: scores bunched in a
    few bins give an ECE that measures the binning more than the model.
    """

    bins: tuple[CalibrationBin, ...]
    bin_count: int
    ece: float
    brier: float

    @property
    def empty_bins(self) -> int:
        """Bins without a case."""
        return self.bin_count - len(self.bins)


def calibration(targets: npt.ArrayLike, scores: npt.ArrayLike, bins: int = 10) -> Calibration:
    """Reliability bins of equal width, expected calibration error and Brier score."""
    y, s = _binary(targets, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    filled = []
    ece = 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count == 0:
            continue
        mean_p, rate = float(s[inside].mean()), float(y[inside].mean())
        filled.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), count, mean_p, rate))
        ece += count / max(1, s.size) * abs(mean_p - rate)
    if bins - len(filled) > bins / 2:
        ece = float("nan")
    brier = float(np.mean((s - y) ** 2)) if s.size else float("nan")
    return Calibration(tuple(filled), bins, float(ece), brier)


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
