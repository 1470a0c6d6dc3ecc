"""Detection predictions: each box a closed polyline on its exact frame, with its score."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes

from inference import Box, Detection, FrameRef, Label, ModelIdentity
from sr_writer import build_results
from tests.sr_writer.conftest import Validator
from tests.sr_writer.reading import read_report, region_reference, value_of
from tests.sr_writer.samples import frame_refs, load


def _detection(
    model: ModelIdentity, sources: list[Dataset], labels: tuple[Label, ...], boxes: list[Box]
) -> Detection:
    return Detection(
        model=model,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=frame_refs(sources),
        labels=labels,
        boxes=tuple(boxes),
    )


def test_boxes_are_closed_polylines_on_their_frames_with_scores(
    model: ModelIdentity, lesion: Label, organ: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("emri_small.dcm")  # 10 frames of 64 x 64
    uid = str(source.SOPInstanceUID)
    boxes = [
        Box(lesion, 0.91, FrameRef(uid, 3), (10.0, 12.5, 20.0, 30.0)),
        Box(lesion, 0.55, FrameRef(uid, 7), (40.0, 40.0, 50.0, 44.0)),
    ]

    results = build_results(_detection(model, [source], (lesion, organ), boxes), [source])

    assert [ds.Modality for ds in results] == ["SR"]
    dciodvfy(results[0], "sr")
    report = read_report(results[0], tmp_path)
    *planar, absent = report.get_planar_roi_measurement_groups()
    assert [group.tracking_identifier for group in planar] == ["lesion #1", "lesion #2"]
    assert [region_reference(group) for group in planar] == [(uid, [3]), (uid, [7])]
    np.testing.assert_array_equal(
        planar[0].roi.value,  # type: ignore[union-attr]
        [[12.5, 10.0], [30.0, 10.0], [30.0, 20.0], [12.5, 20.0], [12.5, 10.0]],
    )
    assert [value_of(group, codes.SCT.Score) for group in planar] == [
        pytest.approx(91.0),
        pytest.approx(55.0),
    ]
    assert absent.tracking_identifier == "liver: not found"
    assert absent.finding_type.value == organ.finding.value  # type: ignore[union-attr]


def test_box_beyond_the_frame_is_clipped_and_one_outside_is_left_out(
    model: ModelIdentity, lesion: Label, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = load("MR_small.dcm")  # 64 x 64
    uid = str(source.SOPInstanceUID)
    boxes = [
        Box(lesion, 0.8, FrameRef(uid), (-5.0, 50.0, 10.0, 80.0)),
        Box(lesion, 0.7, FrameRef(uid), (70.0, 70.0, 90.0, 90.0)),
    ]

    with caplog.at_level(logging.WARNING, logger="sr_writer.sr"):
        (sr,) = build_results(_detection(model, [source], (lesion,), boxes), [source])

    (group,) = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    np.testing.assert_array_equal(
        group.roi.value,  # type: ignore[union-attr]
        [[50.0, 0.0], [64.0, 0.0], [64.0, 10.0], [50.0, 10.0], [50.0, 0.0]],
    )
    assert "box 2 of lesion lies outside its frame" in caplog.text


def test_no_boxes_draws_the_label_as_not_found(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("emri_small.dcm")

    (sr,) = build_results(_detection(model, [source], (lesion,), []), [source])

    dciodvfy(sr, "sr")
    (group,) = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    assert group.finding_type.value == lesion.finding.value  # type: ignore[union-attr]
    assert group.tracking_identifier == "lesion: not found"
    assert value_of(group, codes.DCM.ThresholdValue) == pytest.approx(40.0)
    np.testing.assert_array_equal(
        group.roi.value,  # type: ignore[union-attr]
        [[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]],
    )
    assert region_reference(group) == (str(source.SOPInstanceUID), [6])  # middle frame
