"""The findings record kept per job: what each label came to, never pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from dicom_node.work.findings import job_findings, series_findings
from dicom_node.work.outbox import OutboxFile
from inference import (
    Box,
    Classification,
    CodedConcept,
    Detection,
    FrameRef,
    Label,
    LabelScore,
    ModelIdentity,
    Segmentation,
)

MODEL = ModelIdentity("m", "1.2.0")
CONCEPT = CodedConcept("1", "99TEST", "thing")
FRAMES = (FrameRef("1.2.3.4.1"), FrameRef("1.2.3.4.2"))
HEADER = Dataset()
HEADER.Manufacturer = "ACME"
HEADER.KVP = "120"
HEADER.PixelSpacing = ["0.7", "0.7"]


def label(name: str, threshold: float = 0.5) -> Label:
    return Label(name, CONCEPT, CONCEPT, threshold)


def test_classification_keeps_probability_threshold_and_decision() -> None:
    scores = (LabelScore(label("a", 0.3), 0.4, True), LabelScore(label("b"), 0.2, False))
    record = series_findings(Classification(MODEL, "1.2.3", FRAMES, scores), HEADER)
    assert record["task"] == "classification" and record["model_version"] == "1.2.0"
    assert record["inputs"]["Manufacturer"] == "ACME" and record["inputs"]["KVP"] == 120.0
    assert record["inputs"]["PixelSpacing"] == 0.7 and record["inputs"]["PatientSex"] == "(none)"
    assert record["labels"] == [
        {"label": "a", "threshold": 0.3, "probability": 0.4, "positive": True},
        {"label": "b", "threshold": 0.5, "probability": 0.2, "positive": False},
    ]


def test_segmentation_gives_voxels_and_volume_per_label() -> None:
    masks = np.zeros((2, 4, 4, 2), dtype=bool)
    masks[0, :2, :2, 0] = True  # 4 voxels of label "liver", none of "lesion"
    seg = Segmentation(
        MODEL,
        "1.2.3",
        FRAMES,
        (label("liver"), label("lesion")),
        masks,
        pixel_spacing_mm=(2.0, 2.0),
        slice_spacing_mm=5.0,
    )
    labels = series_findings(seg, HEADER)["labels"]
    assert [(x["voxels"], x["volume_ml"], x["positive"]) for x in labels] == [
        (4, 0.08, True),  # 4 x 20 mm3
        (0, 0.0, False),
    ]


def test_a_3d_label_map_gives_the_same_record_as_masks() -> None:
    """A windowed 3D model answers with a label map, not masks (it crashed the worker)."""
    label_map = np.zeros((2, 4, 4), dtype=np.uint8)
    label_map[0, :2, :2] = 1  # 4 voxels of "liver"
    label_map[1, 3, 3] = 2  # 1 voxel of "lesion"
    seg = Segmentation(
        MODEL,
        "1.2.3",
        FRAMES,
        (label("liver"), label("lesion")),
        None,
        pixel_spacing_mm=(2.0, 2.0),
        slice_spacing_mm=5.0,
        label_map=label_map,
    )
    labels = series_findings(seg, HEADER)["labels"]
    assert [(x["voxels"], x["volume_ml"], x["positive"]) for x in labels] == [
        (4, 0.08, True),
        (1, 0.02, True),
    ]


def test_segmentation_without_spacing_has_no_volume() -> None:
    seg = Segmentation(MODEL, "1.2.3", FRAMES, (label("x"),), np.ones((2, 2, 2, 1), bool))
    assert series_findings(seg, HEADER)["labels"][0]["volume_ml"] is None


def test_detection_counts_boxes_and_best_score() -> None:
    nodule = label("nodule")
    boxes = (
        Box(nodule, 0.7, FRAMES[0], (1, 1, 3, 3)),
        Box(nodule, 0.9, FRAMES[1], (1, 1, 3, 3)),
    )
    record = series_findings(
        Detection(MODEL, "1.2.3", FRAMES, (nodule, label("mass")), boxes), HEADER
    )
    assert [(x["boxes"], x["probability"], x["positive"]) for x in record["labels"]] == [
        (2, 0.9, True),
        (0, None, False),
    ]


def test_not_a_prediction_is_refused() -> None:
    with pytest.raises(TypeError, match="not a prediction: str"):
        series_findings("seg", HEADER)  # type: ignore[arg-type]


def test_job_record_is_json_with_the_result_files() -> None:
    scores = (LabelScore(label("a"), 0.9, True),)
    record = series_findings(Classification(MODEL, "1.2.3", FRAMES, scores), HEADER)
    files = [OutboxFile(Path("/out/1/sr.dcm"), "1.2.9", "1.2.840.10008.5.1.4.1.1.88.22")]
    job = job_findings([record], files)
    assert json.loads(json.dumps(job)) == {"series": [record], "files": ["/out/1/sr.dcm"]}


def test_drift_inputs_keep_what_the_network_saw_and_only_the_age_band() -> None:
    header = Dataset()
    header.PatientAge = "052Y"
    header.PatientBirthDate = "19730102"
    stats = {"intensity_p5": 0.0, "intensity_p50": 0.1, "intensity_p95": 0.6}
    scores = (LabelScore(label("a"), 0.9, True),)
    prediction = Classification(MODEL, "1.2.3", FRAMES, scores, input_statistics=stats)
    inputs = series_findings(prediction, header)["inputs"]
    assert inputs["AgeBand"] == "40-64"
    assert {k: inputs[k] for k in stats} == stats
    assert inputs["foreground_fraction"] is None  # not given: absent from the comparison
    assert "052Y" not in json.dumps(inputs) and "1973" not in json.dumps(inputs)
    header.PatientAge = ""
    header.StudyDate = "20260105"
    assert series_findings(prediction, header)["inputs"]["AgeBand"] == "40-64"  # 53 at the study
