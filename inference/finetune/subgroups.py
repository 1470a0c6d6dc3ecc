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

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from inference.finetune.metrics import auc, operating_point

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
    """One subgroup at the operating threshold."""

    attribute: str
    group: str
    n: int
    positives: int
    auc: float
    sensitivity: float
    false_positive_rate: float


@dataclass(frozen=True)
class AttributeResult:
    """All groups of one attribute and the equalized-odds gap between them.

    The gap is the larger of the spread of true-positive rates and the spread of
    false-positive rates over groups that hold both classes (Hardt et al. 2016);
    0 means the decisions are equally good for every group.
    """

    attribute: str
    groups: tuple[GroupResult, ...]
    equalized_odds_gap: float


def subgroup_results(
    attribute: str,
    values: Sequence[str],
    targets: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float,
) -> AttributeResult:
    """Per-group results of one attribute (e.g. sex) and its equalized-odds gap."""
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    groups_of = np.asarray(list(values), dtype=object)
    if groups_of.size != y.size:
        raise ValueError(f"{groups_of.size} {attribute} values but {y.size} targets")
    results = []
    for group in sorted(set(groups_of.tolist())):
        inside = groups_of == group
        point = operating_point(y[inside], s[inside], threshold)
        results.append(
            GroupResult(
                attribute=attribute,
                group=str(group),
                n=int(inside.sum()),
                positives=int(y[inside].sum()),
                auc=auc(y[inside], s[inside]),
                sensitivity=point.sensitivity,
                false_positive_rate=point.false_positive_rate,
            )
        )
    both = [r for r in results if 0 < r.positives < r.n]
    if len(both) < 2:
        gap = float("nan")
    else:
        tprs = [r.sensitivity for r in both]
        fprs = [r.false_positive_rate for r in both]
        gap = max(max(tprs) - min(tprs), max(fprs) - min(fprs))
    return AttributeResult(attribute, tuple(results), float(gap))
