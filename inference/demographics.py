"""Who a study is of, in the coarse terms that subgroups and drift use: sex and age band.

Validation reports break results down by these groups (`inference.finetune.subgroups`)
and drift monitoring compares their mix with a package's reference profile
(`dicom_node.work.drift_features`); both must band ages the same way, so both read
them here. Age comes from Patient's Age (``045Y``, ``006M`` ...) or, where that is
empty, from Patient's Birth Date and the Study Date; drift records keep only the band.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Sequence

from pydicom import Dataset

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


def patient_age_band(ds: Dataset, bands: Sequence[int] = DEFAULT_AGE_BANDS) -> str:
    """The age band of a header's patient (`age_band` of `patient_age_years`)."""
    return age_band(patient_age_years(ds), bands)


def patient_sex(ds: Dataset) -> str:
    """``M``, ``F``, ``O`` or ``unknown``."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return sex if sex in ("M", "F", "O") else UNKNOWN
