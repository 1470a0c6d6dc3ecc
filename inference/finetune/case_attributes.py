"""What reports and model cards break cases down by, beyond the patient's sex and age.

A model trained on one vendor's scanners often loses on another's, so the validation
report shows every figure per manufacturer beside sex and age band, and the model card
counts the training cases per manufacturer and states the Study Date range they span.
Sex and age are read by `inference.finetune.subgroups`.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.valuerep import DA

# The `Case` attributes every report breaks its figures down by.
SUBGROUP_ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "manufacturer")
UNKNOWN_MANUFACTURER = "unknown"  # the word the subgroups use for an unknown value


def manufacturer(ds: Dataset) -> str:
    """The scanner's Manufacturer as written, stripped; ``unknown`` when empty."""
    return str(ds.get("Manufacturer", "") or "").strip() or UNKNOWN_MANUFACTURER


def study_date(ds: Dataset) -> str:
    """Study Date (or Acquisition Date) as ``YYYY-MM-DD``; empty when absent or invalid."""
    for keyword in ("StudyDate", "AcquisitionDate"):
        text = str(ds.get(keyword, "") or "").strip()
        try:
            return DA(text[:8]).isoformat() if text else ""
        except ValueError:
            continue
    return ""
