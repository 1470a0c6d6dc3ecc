"""What a model found in a series, as a small JSON record kept on its job (no pixels).

Shadow mode's point is to compare what a model says with what radiologists read, so
every finished job keeps, per series: each label's probability and whether it crossed
the package's threshold (classification), its voxel count and volume (segmentation),
its box count and best score (detection); and the job's result files. `dicom-node
results` reads these records back; nothing here needs the package or the pixels again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from dicom_node.work.drift_features import input_features
from dicom_node.work.outbox import OutboxFile
from inference import Classification, Detection, Prediction, Segmentation


def _label_record(name: str, threshold: float, **values: Any) -> dict[str, Any]:
    return {"label": name, "threshold": threshold, **values}


def _classification(prediction: Classification) -> list[dict[str, Any]]:
    return [
        _label_record(
            score.label.name,
            score.label.threshold,
            probability=round(float(score.probability), 6),
            positive=bool(score.positive),
        )
        for score in prediction.scores
    ]


def _segmentation(prediction: Segmentation) -> list[dict[str, Any]]:
    voxel_mm3 = prediction.voxel_volume_mm3
    per_label = prediction.voxel_counts().sum(axis=0)  # masks or a 3D label map alike
    labels = []
    for index, label in enumerate(prediction.labels):
        voxels = int(per_label[index])
        volume_ml = None if voxel_mm3 is None else round(voxels * voxel_mm3 / 1000.0, 4)
        labels.append(
            _label_record(
                label.name, label.threshold, voxels=voxels, volume_ml=volume_ml, positive=voxels > 0
            )
        )
    return labels


def _detection(prediction: Detection) -> list[dict[str, Any]]:
    labels = []
    for label in prediction.labels:
        scores = [box.score for box in prediction.boxes if box.label.name == label.name]
        labels.append(
            _label_record(
                label.name,
                label.threshold,
                boxes=len(scores),
                probability=round(float(max(scores)), 6) if scores else None,
                positive=bool(scores),
            )
        )
    return labels


def series_findings(prediction: Prediction, header: Dataset) -> dict[str, Any]:
    """The record of one series' prediction: task, labels, the model's version and the
    series' acquisition attributes (``header``: its first instance), for drift monitoring.

    Raises
    ------
    TypeError
        When ``prediction`` is not one of `inference`'s prediction types.
    """
    if isinstance(prediction, Classification):
        task, labels = "classification", _classification(prediction)
    elif isinstance(prediction, Segmentation):
        task, labels = "segmentation", _segmentation(prediction)
    elif isinstance(prediction, Detection):
        task, labels = "detection", _detection(prediction)
    else:
        raise TypeError(f"not a prediction: {type(prediction).__name__}")
    return {
        "series_uid": prediction.series_instance_uid,
        "model_version": prediction.model.version,
        "task": task,
        "labels": labels,
        "skipped": list(prediction.skipped),
        "inputs": input_features(header, prediction.input_statistics),
    }


def job_findings(series: list[dict[str, Any]], files: Sequence[OutboxFile]) -> dict[str, Any]:
    """A job's record: its series' findings and its result files.

    The files belong to the job, not to one series: the outbox writes a job's objects
    together.
    """
    return {"series": series, "files": [str(file.path) for file in files]}
