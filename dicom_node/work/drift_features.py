"""The features drift monitoring compares: a few header fields in, scores and volumes out.

One small record per series a model ran on (no pixels, no patient identifiers), kept
in the job's findings (`dicom_node.work.findings`) and, for a package's reference,
in its ``profile.json`` (`dicom_node.work.drift`). Categorical inputs are compared by
population stability index, numeric ones by a two-sample test; outputs are each
label's score (probability, or volume in ml for segmentation) and its positive call.
"""

from __future__ import annotations

from typing import Any

from pydicom import Dataset

# Acquisition attributes whose mix shifts when a scanner, protocol or population changes.
CATEGORICAL_INPUTS = (
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "BodyPartExamined",
    "PatientSex",
)
NUMERIC_INPUTS = ("KVP", "SliceThickness", "PixelSpacing")
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


def input_features(header: Dataset) -> dict[str, Any]:
    """The acquisition attributes of one series (its first instance's header)."""
    features: dict[str, Any] = {k: _text(header.get(k)) for k in CATEGORICAL_INPUTS}
    features.update({k: _number(k, header.get(k)) for k in NUMERIC_INPUTS})
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
