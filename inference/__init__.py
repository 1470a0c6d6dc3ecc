"""The model lifecycle: model packages, preprocessing from DICOM, backends, predictions.

`dicom_node` uses only what this module exports:

* `load_model` starts a package on a backend and returns a `Model`, whose
  `Model.predict` turns one series into a `Prediction`;
* `validate_package` checks a package against its graph without starting a
  backend (for ``dicom-node check-config``), returning a `ModelPackage` whose
  ``spec`` (`ModelSpec`) holds name, version, task and modalities;
* the model card a package carries (`ModelPackage.card`, a `ModelCard`), rendered for
  people by `card_document` with the node's drift thresholds as its `SurveillancePlan`;
  `card_mismatch` says, without loading the graph, when it describes another version;
* the errors: `InferenceError` and its subclasses `ModelPackageError` (broken
  package), `UnsupportedSeriesError` (skip the job) and `BackendUnavailableError`;
* the Prediction types shared with `sr_writer`, and the one reading of frame
  geometry (`frame_geometry`, `FrameGeometry`) that results are written with;
* `INPUT_STATISTICS`, the names of a Prediction's ``input_statistics`` (what the
  network saw), and `patient_age_band`, for drift monitoring's feature records;
* `atomic_write` and `fsync_dir`, the project's one durable-write rule (temp name,
  fsync, rename), which the node's outbox and spool use too.
"""

from inference.atomic_file import atomic_write, fsync_dir
from inference.demographics import patient_age_band
from inference.devices import GpuGate
from inference.errors import (
    BackendUnavailableError,
    InferenceError,
    ModelPackageError,
    UnsupportedSeriesError,
)
from inference.input_statistics import INPUT_STATISTICS
from inference.model import Model, load_model
from inference.model_card import ModelCard, SurveillancePlan
from inference.model_card_files import card_document
from inference.package import ModelPackage, card_mismatch, validate_package
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
from inference.preprocessing.geometry import FrameGeometry, frame_geometry
from inference.spec import ModelSpec, Task

__all__ = [
    "INPUT_STATISTICS",
    "BackendUnavailableError",
    "Box",
    "Classification",
    "CodedConcept",
    "Detection",
    "FrameGeometry",
    "FrameRef",
    "GpuGate",
    "Heatmap",
    "InferenceError",
    "Label",
    "LabelScore",
    "Model",
    "ModelCard",
    "ModelIdentity",
    "ModelPackage",
    "ModelPackageError",
    "ModelSpec",
    "Prediction",
    "Segmentation",
    "SurveillancePlan",
    "Task",
    "UnsupportedSeriesError",
    "atomic_write",
    "card_document",
    "card_mismatch",
    "frame_geometry",
    "fsync_dir",
    "load_model",
    "patient_age_band",
    "validate_package",
]
