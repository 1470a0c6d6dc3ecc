"""Real CT from other vendors: sources the SEG and SR must still be written for."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

from inference import FrameRef, Label, ModelIdentity, Segmentation, frame_geometry
from sr_writer import build_results
from sr_writer.sources import SourceSeries
from tests.sr_writer.conftest import Validator
from tests.sr_writer.samples import frame_refs, load, single_frame_series


def _prediction(model: ModelIdentity, sources: list[Dataset], label: Label) -> Segmentation:
    masks = np.zeros((len(sources), 128, 128, 1), dtype=bool)
    masks[:, 40:60, 50:70] = True
    return Segmentation(
        model=model,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=frame_refs(sources),
        labels=(label,),
        masks=masks,
        pixel_spacing_mm=(0.66, 0.66),
        slice_spacing_mm=2.5,
    )


def test_source_without_type2_patient_attributes_still_gets_its_seg(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator
) -> None:
    sources = single_frame_series("CT_small.dcm", 3)
    for ds in sources:
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID"):
            ds.pop(keyword, None)
    results = build_results(_prediction(model, sources, lesion), sources)
    assert [ds.Modality for ds in results] == ["SR", "SEG"]
    sr, seg = results
    assert sr.CompletionFlag == "COMPLETE"
    assert seg.PatientBirthDate == "" and seg.PatientSex == ""
    assert "PatientBirthDate" not in sources[0]  # the caller's datasets are untouched
    dciodvfy(seg, "seg-no-type2")
    dciodvfy(sr, "sr-no-type2")


def test_empty_deidentification_method_is_replaced_in_every_object(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator
) -> None:
    sources = single_frame_series("CT_small.dcm", 3)
    for ds in sources:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = ""
    results = build_results(_prediction(model, sources, lesion), sources)
    assert [ds.Modality for ds in results] == ["SR", "SEG"]
    for result in results:
        assert result.PatientIdentityRemoved == "YES"
        assert "not stated" in str(result.DeidentificationMethod)
        dciodvfy(result, f"deid-{result.Modality}")


def test_results_read_frame_geometry_as_the_model_does() -> None:
    enhanced = load("eCT_Supplemental.dcm")
    sources = SourceSeries([enhanced])
    for number in (1, 2):
        frame = sources.frame(FrameRef(str(enhanced.SOPInstanceUID), number))
        assert frame.geometry == frame_geometry(enhanced, number - 1)
        assert frame.geometry.position is not None and frame.geometry.pixel_spacing is not None
    broken = single_frame_series("CT_small.dcm", 1)[0]
    broken.ImageOrientationPatient = [1, 0, 0, 0, 1]  # five values: no orientation at all
    broken.PixelSpacing = [0, 0]  # "unknown" as some writers put it
    frame = SourceSeries([broken]).frame(FrameRef(str(broken.SOPInstanceUID)))
    assert frame.geometry.orientation is None and frame.geometry.pixel_spacing is None
    assert SourceSeries([broken]).spatial_problem() == (
        f"source has no Image Orientation (Patient) ({broken.SOPInstanceUID})"
    )
