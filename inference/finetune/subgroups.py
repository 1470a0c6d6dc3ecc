"""Subgroups from the DICOM headers (sex, age band) and the equalized-odds gap.

A model that is right on average can still miss findings mostly in one group; the
report shows sensitivity and false-positive rate per group so that a gap is seen
before deployment. Sex and age band are read by `inference.demographics` (drift
monitoring bands ages the same way); its names stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt

from inference.demographics import (  # noqa: F401  (re-exported for the training data)
    DEFAULT_AGE_BANDS,
    age_band,
    patient_age_years,
    patient_sex,
)
from inference.finetune.intervals import MIN_PER_CLASS, class_count_note, cluster_bootstrap
from inference.finetune.metrics import auc, decision_counts


@dataclass(frozen=True)
class GroupResult:
    """One subgroup at the operating threshold.

    ``auc_ci95`` is a patient-bootstrap interval, or ``None`` with ``note`` saying
    why (too few positives or negatives in the group to estimate it).
    """

    attribute: str
    group: str
    n: int
    positives: int
    auc: float
    auc_ci95: tuple[float, float] | None
    note: str | None
    sensitivity: float
    false_positive_rate: float


@dataclass(frozen=True)
class AttributeResult:
    """All groups of one attribute and the equalized-odds gap between them.

    The gap is the larger of the spread of true-positive rates and the spread of
    false-positive rates over groups that hold both classes (Hardt et al. 2016);
    0 means the decisions are equally good for every group. ``gap_ci95`` is a
    patient-bootstrap interval, or ``None`` with ``gap_note`` saying why: a rate
    spread between groups of a few positives is noise, not a finding.
    """

    attribute: str
    groups: tuple[GroupResult, ...]
    equalized_odds_gap: float
    gap_ci95: tuple[float, float] | None
    gap_note: str | None


def _auc_of(
    truth: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64], index: npt.NDArray[np.int64]
) -> float:
    return auc(truth[index], scores[index])


def _gap(
    y: npt.NDArray[np.bool_],
    called: npt.NDArray[np.bool_],
    groups_of: npt.NDArray[np.object_],
    names: Sequence[str],
) -> float:
    """Equalized-odds gap over the named groups; NaN unless two hold both classes."""
    tprs, fprs = [], []
    for name in names:
        inside = groups_of == name
        positives, negatives = inside & y, inside & ~y
        if positives.any() and negatives.any():
            tprs.append(called[positives].mean())
            fprs.append(called[negatives].mean())
    if len(tprs) < 2:
        return float("nan")
    return float(max(max(tprs) - min(tprs), max(fprs) - min(fprs)))


def subgroup_results(
    attribute: str,
    values: Sequence[str],
    targets: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: npt.ArrayLike,
    patients: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
) -> AttributeResult:
    """Per-group results of one attribute (e.g. sex) and its equalized-odds gap.

    Parameters
    ----------
    attribute : str
        The attribute's name.
    values : sequence of str
        The attribute's value (the group) of every case.
    targets, scores : array_like
        Truth and score of every case.
    threshold : float or array_like
        The decision threshold, or one per case.
    patients : sequence of str
        Patient of every case: bootstrap intervals resample whole patients.
    resamples, seed : int
        Bootstrap replicates and their seed.

    Returns
    -------
    AttributeResult

    Raises
    ------
    ValueError
        When the sequences differ in length.
    """
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    groups_of = np.asarray(list(values), dtype=object)
    ids = np.asarray(list(patients), dtype=object)
    if groups_of.size != y.size or ids.size != y.size:
        raise ValueError(
            f"{groups_of.size} {attribute} values and {ids.size} patients but {y.size} targets"
        )
    called = s >= np.asarray(threshold, dtype=np.float64).ravel()
    results = []
    for group in sorted(set(groups_of.tolist())):
        inside = np.flatnonzero(groups_of == group)
        point = decision_counts(y[inside], called[inside])
        note = class_count_note(point.positives, point.negatives)
        interval = None
        if note is None:
            interval = cluster_bootstrap(
                partial(_auc_of, y[inside], s[inside]), ids[inside], resamples=resamples, seed=seed
            )
        results.append(
            GroupResult(
                attribute=attribute,
                group=str(group),
                n=int(inside.size),
                positives=point.positives,
                auc=auc(y[inside], s[inside]),
                auc_ci95=interval,
                note=note,
                sensitivity=point.sensitivity,
                false_positive_rate=point.false_positive_rate,
            )
        )
    both = [r for r in results if 0 < r.positives < r.n]
    names = [r.group for r in both]
    gap = _gap(y, called, groups_of, names)
    small = [r for r in both if class_count_note(r.positives, r.n - r.positives)]
    gap_note, gap_interval = None, None
    if len(both) < 2:
        gap_note = "undefined: fewer than two groups hold both classes"
    elif small:
        counts = ", ".join(
            f"{r.group} {r.positives} positive(s) and {r.n - r.positives} negative(s)"
            for r in small
        )
        gap_note = f"too few to estimate: {counts}, fewer than {MIN_PER_CLASS} of each"
    else:
        gap_interval = cluster_bootstrap(
            lambda index: _gap(y[index], called[index], groups_of[index], names),
            ids,
            resamples=resamples,
            seed=seed,
        )
    return AttributeResult(attribute, tuple(results), gap, gap_interval, gap_note)
