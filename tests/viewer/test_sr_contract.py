"""Reports that OHIF can load: every finding it reads has a region to draw (fast, no browser).

OHIF (``extensions/cornerstone-dicom-sr/src/getSopClassHandlerModule.ts``, 3.13) merges
the measurement groups of a TID 1500 report by Tracking Unique Identifier and, for each
merged finding, reads ``coords[0].ReferencedSOPSequence``. A finding none of whose groups
holds a SCOORD has no ``coords[0]``: the loader throws a TypeError and the whole report
opens as an empty black viewport (seen in test_ohif.py). So each Tracking Unique
Identifier must own a SCOORD that names the image it is drawn on. These tests hold
`sr_writer.build_results` to that for every kind of prediction, without a browser.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes

from inference import (
    Box,
    Classification,
    Detection,
    FrameRef,
    Heatmap,
    Label,
    LabelScore,
    ModelIdentity,
    Segmentation,
)
from sr_writer import build_results
from tests.sr_writer.samples import concept, frame_refs, load, single_frame_series

IMAGING_MEASUREMENTS = "126010"
TRACKING_UID = "112040"


@pytest.fixture
def model() -> ModelIdentity:
    return ModelIdentity(name="demo-ct-lesion", version="1.0.0")


@pytest.fixture
def lesion() -> Label:
    return Label("lesion", concept(codes.SCT.Lesion), concept(codes.SCT.Lesion), 0.5)


@pytest.fixture
def organ() -> Label:
    return Label("liver", concept(codes.SCT.Liver), concept(codes.SCT.Organ), 0.5)


def _findings_without_region(sr: Dataset) -> list[str]:
    """Tracking identifiers whose groups, merged as OHIF merges them, hold no SCOORD."""
    (container,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS
    ]
    drawable: dict[str, bool] = defaultdict(bool)
    names: dict[str, str] = {}
    for group in container.ContentSequence:
        items = list(group.ContentSequence)
        (uid,) = [i.UID for i in items if i.ConceptNameCodeSequence[0].CodeValue == TRACKING_UID]
        names[uid] = next(str(i.TextValue) for i in items if i.ValueType == "TEXT")
        drawable[uid] |= any(_drawn_on_an_image(i) for i in items)
    return [names[uid] for uid, ok in drawable.items() if not ok]


def _drawn_on_an_image(item: Dataset) -> bool:
    if item.ValueType != "SCOORD":
        return False
    return any("ReferencedSOPSequence" in child for child in item.get("ContentSequence", []))


def test_segment_with_seg_is_one_drawable_finding(
    model: ModelIdentity, lesion: Label, organ: Label
) -> None:
    series = single_frame_series("CT_small.dcm", 3)
    masks = np.zeros((3, 128, 128, 2), dtype=bool)
    masks[:, 40:60, 40:60, 0] = True  # lesion found; liver absent
    prediction = Segmentation(
        model=model,
        series_instance_uid=str(series[0].SeriesInstanceUID),
        frames=frame_refs(series),
        labels=(lesion, organ),
        masks=masks,
        pixel_spacing_mm=(0.5, 0.5),
        slice_spacing_mm=2.5,
    )

    sr, seg = build_results(prediction, series)

    assert seg.Modality == "SEG"
    assert _findings_without_region(sr) == []


def test_classification_with_a_negative_label_is_drawable(
    model: ModelIdentity, lesion: Label, organ: Label
) -> None:
    source = load("CT_small.dcm")
    values = np.zeros((int(source.Rows), int(source.Columns)), dtype=np.float32)
    values[30:50, 30:50] = 1.0
    prediction = Classification(
        model=model,
        series_instance_uid=str(source.SeriesInstanceUID),
        frames=frame_refs([source]),
        scores=(
            LabelScore(lesion, probability=0.9, positive=True),
            LabelScore(organ, probability=0.2, positive=False),
        ),
        heatmaps=(Heatmap(lesion, FrameRef(str(source.SOPInstanceUID)), values),),
    )

    sr = build_results(prediction, [source])[0]

    assert _findings_without_region(sr) == []


def test_detection_with_a_label_not_found_is_drawable(
    model: ModelIdentity, lesion: Label, organ: Label
) -> None:
    source = load("CT_small.dcm")
    frame = FrameRef(str(source.SOPInstanceUID))
    prediction = Detection(
        model=model,
        series_instance_uid=str(source.SeriesInstanceUID),
        frames=(frame,),
        labels=(lesion, organ),
        boxes=(Box(lesion, 0.8, frame, (10.0, 10.0, 30.0, 40.0)),),
    )

    sr = build_results(prediction, [source])[0]

    assert _findings_without_region(sr) == []


def test_nothing_found_is_drawable(model: ModelIdentity, lesion: Label) -> None:
    source = load("CT_small.dcm")
    prediction = Detection(
        model=model,
        series_instance_uid=str(source.SeriesInstanceUID),
        frames=(FrameRef(str(source.SOPInstanceUID)),),
        labels=(lesion,),
        boxes=(),
    )

    sr = build_results(prediction, [source])[0]

    assert _findings_without_region(sr) == []


def test_segments_carry_distinct_display_colours(
    model: ModelIdentity, lesion: Label, organ: Label
) -> None:
    """OHIF warns on every load of a SEG whose segments have no recommended colour."""
    series = single_frame_series("CT_small.dcm", 2)
    masks = np.zeros((2, 128, 128, 2), dtype=bool)
    masks[:, 40:60, 40:60, 0] = True
    masks[:, 80:90, 80:90, 1] = True
    prediction = Segmentation(
        model=model,
        series_instance_uid=str(series[0].SeriesInstanceUID),
        frames=frame_refs(series),
        labels=(lesion, organ),
        masks=masks,
    )

    seg = build_results(prediction, series)[1]

    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    assert len(colours) == 2 and len(set(colours)) == 2
