"""The model lifecycle: model packages, preprocessing from DICOM, backends, predictions.

`dicom_node` uses only what this module exports.
"""

from inference.prediction import (
    Box,
    Classification,
    CodedConcept,
    Detection,
    FrameRef,
    Heatmap,
    Label,
    LabelScore,
    ModelIdentity,
    Prediction,
    Segmentation,
)

__all__ = [
    "Box",
    "Classification",
    "CodedConcept",
    "Detection",
    "FrameRef",
    "Heatmap",
    "Label",
    "LabelScore",
    "ModelIdentity",
    "Prediction",
    "Segmentation",
]
