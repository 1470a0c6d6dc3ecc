"""Comments in a report, and amending a written report into a PARTIAL new version."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset

from inference import Classification, Label, LabelScore, ModelIdentity
from sr_writer import amend_report, build_results
from tests.sr_writer.conftest import Validator
from tests.sr_writer.reading import saved
from tests.sr_writer.samples import frame_refs, single_frame_series


def _texts(items: pydicom.Sequence) -> list[str]:
    found = []
    for item in items:
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        if "ContentSequence" in item:
            found.extend(_texts(item.ContentSequence))
    return found


@pytest.fixture
def report(model: ModelIdentity, organ: Label) -> Dataset:
    sources = single_frame_series("CT_small.dcm", 2)
    prediction = Classification(
        model=model,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=frame_refs(sources),
        scores=(LabelScore(label=organ, probability=0.9, positive=True),),
    )
    (sr,) = build_results(prediction, sources, comments=["Chain 'c', step 's': ran after 'a'"])
    return sr


def test_comments_go_into_the_report_which_stays_complete(
    report: Dataset, dciodvfy: Validator, tmp_path: Path
) -> None:
    assert "Chain 'c', step 's': ran after 'a'" in _texts(report.ContentSequence)
    assert report.CompletionFlag == "COMPLETE"
    dciodvfy(report, "commented")
    hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(saved(report, tmp_path, "c")))


def test_an_amended_report_is_a_partial_successor_that_says_why(
    report: Dataset, dciodvfy: Validator, tmp_path: Path
) -> None:
    amended = amend_report(report, ["step 'b' (model m) failed: boom"])
    assert amended.CompletionFlag == "PARTIAL"
    assert amended.CompletionFlagDescription == "step 'b' (model m) failed: boom"
    assert amended.SeriesInstanceUID == report.SeriesInstanceUID
    assert amended.SOPInstanceUID != report.SOPInstanceUID
    assert amended.InstanceNumber == report.InstanceNumber + 1
    reference = amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == report.SOPInstanceUID
    texts = _texts(amended.ContentSequence)
    assert texts[-1] == "step 'b' (model m) failed: boom"
    assert "Chain 'c', step 's': ran after 'a'" in texts  # into the same container
    assert "step 'b' (model m) failed: boom" not in _texts(report.ContentSequence)
    assert amend_report(report, ["step 'b' (model m) failed: boom"]).SOPInstanceUID == (
        amended.SOPInstanceUID
    )
    dciodvfy(amended, "amended")
    hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(saved(amended, tmp_path, "a")))


def test_only_an_sr_with_a_comment_is_amended(report: Dataset) -> None:
    with pytest.raises(ValueError, match="at least one comment"):
        amend_report(report, [])
    not_sr = Dataset()
    not_sr.Modality = "CT"
    with pytest.raises(ValueError, match="not an SR document"):
        amend_report(not_sr, ["x"])
