"""The features drift monitoring compares: header fields and what the network saw in,
scores and volumes out.

One small record per series a model ran on (no pixels, no patient identifiers: the
patient's age is kept only as its band), kept in the job's findings
(`dicom_node.work.findings`) and, for a package's reference, in its ``profile.json``
(`dicom_node.work.drift`). Inputs are acquisition attributes, the age band, and the
intensity quantiles and foreground fraction of the preprocessed input (the
Prediction's ``input_statistics``). Categorical inputs are compared by population
stability index, numeric ones by a two-sample test; outputs are each label's score
(probability, or volume in ml for segmentation) and its positive call.
"""

from __future__ import annotations

from typing import Any

from pydicom import Dataset

from inference import INPUT_STATISTICS, patient_age_band

AGE_BAND = "AgeBand"  # from PatientAge, else PatientBirthDate and StudyDate
# Acquisition attributes whose mix shifts when a scanner, protocol or population changes.
CATEGORICAL_HEADER = (
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "BodyPartExamined",
    "PatientSex",
)
CATEGORICAL_INPUTS = (*CATEGORICAL_HEADER, AGE_BAND)
NUMERIC_HEADER = ("KVP", "SliceThickness", "PixelSpacing")
NUMERIC_INPUTS = (*NUMERIC_HEADER, *INPUT_STATISTICS)
MISSING = "(none)"


def _text(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value) or MISSING
    return str(value).strip() or MISSING


def _number(keyword: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        # PixelSpacing: the row spacing stands for both (square pixels are the norm).
        return float(value[0] if keyword == "PixelSpacing" else value)
    except (TypeError, ValueError, IndexError):
        return None


def input_features(header: Dataset, input_statistics: dict[str, float]) -> dict[str, Any]:
    """The inputs of one series: acquisition attributes and age band from its first
    instance's ``header``, and the statistics of its preprocessed input."""
    features: dict[str, Any] = {k: _text(header.get(k)) for k in CATEGORICAL_HEADER}
    features[AGE_BAND] = patient_age_band(header)
    features.update({k: _number(k, header.get(k)) for k in NUMERIC_HEADER})
    features.update({k: input_statistics.get(k) for k in INPUT_STATISTICS})
    return features


def output_features(labels: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, bool]]:
    """Each label's score (probability, else volume in ml) and positive call of a record."""
    scores: dict[str, float] = {}
    positives: dict[str, bool] = {}
    for label in labels:
        value = label.get("probability")
        if value is None:
            value = label.get("volume_ml")
        if value is not None:
            scores[f"score:{label['label']}"] = float(value)
        positives[str(label["label"])] = bool(label.get("positive", False))
    return scores, positives
