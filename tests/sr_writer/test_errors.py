"""Bad input fails fast, naming the offending value."""

from __future__ import annotations

import numpy as np
import pytest

from inference import Box, Detection, FrameRef, Label, ModelIdentity, Segmentation
from sr_writer import SourceMismatchError, build_results
from tests.sr_writer.samples import frame_refs, load, single_frame_series


def test_frame_not_among_sources_is_named(model: ModelIdentity, lesion: Label) -> None:
    source = load("CT_small.dcm")
    box = Box(lesion, 0.9, FrameRef("1.2.3.4"), (1.0, 1.0, 5.0, 5.0))
    prediction = Detection(model, "1.2", frame_refs([source]), (lesion,), (box,))

    with pytest.raises(SourceMismatchError, match=r"1\.2\.3\.4 #1: not among the source"):
        build_results(prediction, [source])


def test_frame_number_beyond_the_instance_is_named(model: ModelIdentity, lesion: Label) -> None:
    source = load("emri_small.dcm")
    box = Box(lesion, 0.9, FrameRef(str(source.SOPInstanceUID), 11), (1.0, 1.0, 5.0, 5.0))
    prediction = Detection(model, "1.2", frame_refs([source]), (lesion,), (box,))

    with pytest.raises(SourceMismatchError, match=r"#11: the instance has 10 frame\(s\)"):
        build_results(prediction, [source])


def test_masks_that_do_not_match_the_frames_are_refused(
    model: ModelIdentity, lesion: Label
) -> None:
    sources = single_frame_series("CT_small.dcm", 2)
    masks = np.zeros((3, 128, 128, 1), dtype=bool)
    masks[0, 1, 1, 0] = True
    prediction = Segmentation(model, "1.2", frame_refs(sources), (lesion,), masks)

    with pytest.raises(ValueError, match=r"masks must have shape \(frames=2.*got \(3, 128"):
        build_results(prediction, sources)


def test_sources_from_two_studies_are_refused(model: ModelIdentity, lesion: Label) -> None:
    sources = [load("CT_small.dcm"), load("MR_small.dcm")]
    prediction = Detection(model, "1.2", frame_refs(sources), (lesion,), ())

    with pytest.raises(ValueError, match="source datasets span several studies"):
        build_results(prediction, sources)


def test_empty_sources_are_refused(model: ModelIdentity, lesion: Label) -> None:
    with pytest.raises(ValueError, match="at least one dataset"):
        build_results(Detection(model, "1.2", (), (lesion,), ()), [])


@pytest.mark.parametrize("root", ["1.2.3", "1.02.3.", "a.b.", "1." * 20])
def test_bad_uid_root_is_refused(model: ModelIdentity, lesion: Label, root: str) -> None:
    source = load("CT_small.dcm")
    prediction = Detection(model, "1.2", frame_refs([source]), (lesion,), ())

    with pytest.raises(ValueError, match="uid_root must be dotted digits"):
        build_results(prediction, [source], uid_root=root)


def test_unknown_segmentation_kind_is_refused(model: ModelIdentity, lesion: Label) -> None:
    source = load("CT_small.dcm")
    prediction = Detection(model, "1.2", frame_refs([source]), (lesion,), ())

    with pytest.raises(ValueError, match="'SOFT' is not a valid SegmentationKindValues"):
        build_results(prediction, [source], segmentation_kind="SOFT")


def test_prediction_without_frames_is_refused(model: ModelIdentity, lesion: Label) -> None:
    source = load("CT_small.dcm")

    with pytest.raises(ValueError, match="prediction of model demo-ct-lesion names no frames"):
        build_results(Detection(model, "1.2", (), (lesion,), ()), [source])
