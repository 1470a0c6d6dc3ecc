"""Subgroups from the DICOM headers (sex, age band) and the equalized-odds gap.

A model that is right on average can still miss findings mostly in one group; the
report shows sensitivity and false-positive rate per group so that a gap is seen
before deployment. Age comes from Patient's Age (``045Y``, ``006M`` ...) or, where
that is empty, from Patient's Birth Date and the Study Date.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from inference.finetune.intervals import MIN_PER_CLASS, class_count_note, cluster_bootstrap
from inference.finetune.metrics import auc, decision_counts

UNKNOWN = "unknown"
DEFAULT_AGE_BANDS: tuple[int, ...] = (18, 40, 65)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def patient_age_years(ds: Dataset) -> float | None:
    """Age at the study in years, from PatientAge or PatientBirthDate; ``None`` if unknown."""
    match = _AGE.match(str(ds.get("PatientAge", "") or "").strip().upper())
    if match:
        return int(match.group(1)) * _UNIT_YEARS[match.group(2)]
    born = _date(ds.get("PatientBirthDate"))
    seen = _date(ds.get("StudyDate")) or _date(ds.get("AcquisitionDate"))
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / 365.25


def age_band(age: float | None, bands: Sequence[int] = DEFAULT_AGE_BANDS) -> str:
    """Name the band an age falls in, e.g. ``40-64`` or ``65+``, or ``unknown``."""
    if age is None:
        return UNKNOWN
    edges = [0, *bands]
    for low, high in itertools.pairwise(edges):
        if age < high:
            return f"{low}-{high - 1}"
    return f"{edges[-1]}+"


def patient_sex(ds: Dataset) -> str:
    """``M``, ``F``, ``O`` or ``unknown``."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return sex if sex in ("M", "F", "O") else UNKNOWN


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
