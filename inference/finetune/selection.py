"""Which fold's network is shipped, by a rule that does not reward a lucky small fold.

Every fold's network is judged on its own validation set, and those sets differ in
size and class balance: with twelve folds of three studies, a fold holding one
positive scores AUC 1.000 by luck as often as not. Taking the highest AUC (or the
highest early-stopping metric, which is also a maximum over epochs) ships that
fold. The rule here ranks folds by the lower end of a 95% interval of their figure
instead, so that a fold must be both good and large enough to show it:

* classification: the mean over labels of the lower bound of the AUC's score
  interval (`auc_score_interval`, which stays wide on a handful of cases); a label
  a fold cannot rank (no positives or no negatives) counts as 0;
* segmentation: the lower bound of the mean per-case Dice (normal approximation
  over the fold's cases); a fold of one case counts as 0.

Ties go to the larger validation set, then to the lower fold number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.finetune.intervals import Z95, auc_score_interval
from inference.finetune.metrics import auc

CLASSIFICATION_RULE = (
    "the fold whose network has the highest lower 95% bound of its validation AUC "
    "(Newcombe score interval; mean over labels), so that a small fold's lucky AUC "
    "does not win"
)
SEGMENTATION_RULE = (
    "the fold whose network has the highest lower 95% bound of its mean per-case "
    "validation Dice, so that a small fold's lucky Dice does not win"
)


@dataclass(frozen=True)
class FoldScore:
    """A fold's selection score and the size of the validation set it was measured on."""

    fold: int
    score: float
    cases: int


def classification_score(truth: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> float:
    """Mean over labels of the lower 95% bound of the fold's AUC.

    Parameters
    ----------
    truth, scores : numpy.ndarray
        (validation cases, labels) 0/1 truth and the fold network's case scores.

    Returns
    -------
    float
        In [0, 1]; a label without both classes contributes 0.
    """
    bounds = []
    for k in range(truth.shape[1]):
        y = truth[:, k] > 0.5
        low, _ = auc_score_interval(auc(y, scores[:, k]), int(y.sum()), int((~y).sum()))
        bounds.append(0.0 if math.isnan(low) else low)
    return float(np.mean(bounds))


def segmentation_score(case_dice: Sequence[float]) -> float:
    """Lower 95% bound of the mean per-case Dice (0 for fewer than two cases)."""
    values = np.asarray(case_dice, dtype=np.float64)
    if values.size < 2:
        return 0.0
    spread = float(values.std(ddof=1)) / math.sqrt(values.size)
    return max(0.0, float(values.mean()) - Z95 * spread)


def select_fold(scores: Sequence[FoldScore]) -> FoldScore:
    """The fold to ship: highest score, then most validation cases, then lowest number.

    Raises
    ------
    ValueError
        When there is no fold.
    """
    if not scores:
        raise ValueError("no fold to select from")
    return max(scores, key=lambda s: (s.score, s.cases, -s.fold))


__all__ = [
    "CLASSIFICATION_RULE",
    "SEGMENTATION_RULE",
    "FoldScore",
    "classification_score",
    "segmentation_score",
    "select_fold",
]
