"""Segmentation predictions: SEG + SR, validated by dciodvfy and read back by highdicom."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes

from inference import Label, ModelIdentity, Segmentation
from sr_writer import build_results
from sr_writer.contour import largest_outline
from tests.sr_writer.conftest import Validator
from tests.sr_writer.reading import evaluation_of, read_report, region_reference, saved, value_of
from tests.sr_writer.samples import concept, frame_refs, load, single_frame_series

PRESENT, ABSENT = "52101004", "272519000"


def _disc(rows: int, columns: int, center: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:rows, :columns]
    return np.asarray((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2)


def _prediction(
    model: ModelIdentity,
    sources: list[Dataset],
    labels: tuple[Label, ...],
    masks: np.ndarray,
    *,
    slice_spacing: float | None = 2.5,
    probabilities: np.ndarray | None = None,
) -> Segmentation:
    return Segmentation(
        model=model,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=frame_refs(sources),
        labels=labels,
        masks=masks,
        pixel_spacing_mm=(0.5, 0.5),
        slice_spacing_mm=slice_spacing,
        probabilities=probabilities,
    )


@pytest.fixture
def ct_series() -> list[Dataset]:
    return single_frame_series("CT_small.dcm", 3)


@pytest.fixture
def masks() -> np.ndarray:
    """Lesion on all three slices (largest on the middle one), liver on one."""
    masks = np.zeros((3, 128, 128, 2), dtype=bool)
    for index, radius in enumerate((6, 12, 9)):
        masks[index, ..., 0] = _disc(128, 128, (40, 50), radius)
    masks[2, 40:44, 90:94, 0] = True  # a second, smaller lesion on the last slice
    masks[1, 90:110, 70:100, 1] = True
    return masks


def test_seg_from_single_frame_series_is_valid_and_reads_back(
    model: ModelIdentity,
    lesion: Label,
    organ: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    _, seg = build_results(_prediction(model, ct_series, (lesion, organ), masks), ct_series)

    dciodvfy(seg, "seg")
    read = hd.seg.segread(saved(seg, tmp_path, "seg"))
    assert [item.SegmentLabel for item in read.SegmentSequence] == ["lesion", "liver"]
    assert read.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    algorithm = read.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("demo-ct-lesion", "1.2.0")
    pixels = read.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in ct_series], combine_segments=False
    )
    np.testing.assert_array_equal(pixels.astype(bool), masks)
    assert sorted(read.get_source_image_uids()) == sorted(
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in ct_series
    )
    assert read.SeriesDescription == (
        "AI segmentation - demo-ct-lesion 1.2.0 - not for clinical use"
    )
    assert read.PatientName == ct_series[0].PatientName
    assert read.StudyInstanceUID == ct_series[0].StudyInstanceUID
    assert read.SeriesInstanceUID != ct_series[0].SeriesInstanceUID


def test_sr_draws_each_segment_outline_on_its_largest_slice(
    model: ModelIdentity,
    lesion: Label,
    organ: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    sr, _ = build_results(_prediction(model, ct_series, (lesion, organ), masks), ct_series)

    dciodvfy(sr, "sr")
    report = read_report(sr, tmp_path)
    planar = report.get_planar_roi_measurement_groups()
    assert [group.tracking_identifier for group in planar] == ["lesion", "liver"]
    for group, label_index, key in ((planar[0], 0, 1), (planar[1], 1, 1)):
        assert region_reference(group) == (str(ct_series[key].SOPInstanceUID), [])
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        outline = largest_outline(masks[key, ..., label_index])
        assert outline is not None
        np.testing.assert_array_equal(group.roi.value, outline.points)
        np.testing.assert_array_equal(group.roi.value[0], group.roi.value[-1])
        assert value_of(group, codes.SCT.Area) == pytest.approx(
            masks[key, ..., label_index].sum() * 0.25
        )
        assert group.finding_type.value == ("52988006", "10200004")[label_index]
    assert evaluation_of(planar[0], planar[0].finding_type) == PRESENT


def test_segment_group_shares_the_outline_tracking_uid_and_holds_the_volume(
    model: ModelIdentity,
    lesion: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    tmp_path: Path,
) -> None:
    """OHIF merges groups by Tracking UID; one finding: outline + area, segment + volume."""
    sr, _ = build_results(_prediction(model, ct_series, (lesion,), masks[..., :1]), ct_series)

    report = read_report(sr, tmp_path)
    (planar,) = report.get_planar_roi_measurement_groups()
    (volumetric,) = report.get_volumetric_roi_measurement_groups()
    assert planar.tracking_uid == volumetric.tracking_uid
    assert [m.name.meaning for m in planar.get_measurements()] == ["Area"]
    assert [m.name.meaning for m in volumetric.get_measurements()] == ["Volume"]
    assert value_of(volumetric, codes.SCT.Volume) == pytest.approx(masks[..., 0].sum() * 0.25 * 2.5)


def test_without_seg_the_outline_group_holds_the_volume(
    model: ModelIdentity, lesion: Label, ct_series: list[Dataset], masks: np.ndarray, tmp_path: Path
) -> None:
    for ds in ct_series:
        del ds.FrameOfReferenceUID

    (sr,) = build_results(_prediction(model, ct_series, (lesion,), masks[..., :1]), ct_series)

    (planar,) = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    assert value_of(planar, codes.SCT.Volume) == pytest.approx(masks[..., 0].sum() * 0.25 * 2.5)


def test_sr_references_the_seg_segments_with_their_volumes(
    model: ModelIdentity,
    lesion: Label,
    organ: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    tmp_path: Path,
) -> None:
    sr, seg = build_results(_prediction(model, ct_series, (lesion, organ), masks), ct_series)

    volumetric = read_report(sr, tmp_path).get_volumetric_roi_measurement_groups()
    assert [group.referenced_segment.referenced_segment_numbers for group in volumetric] == [
        [1],
        [2],
    ]
    assert {group.referenced_segment.referenced_sop_instance_uid for group in volumetric} == {
        seg.SOPInstanceUID
    }
    assert value_of(volumetric[1], codes.SCT.Volume) == pytest.approx(20 * 30 * 0.25 * 2.5)
    evidence = {
        item.SeriesInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }
    assert evidence == {ct_series[0].SeriesInstanceUID, seg.SeriesInstanceUID}


def test_2d_model_draws_each_slice_with_its_area(
    model: ModelIdentity, lesion: Label, ct_series: list[Dataset], masks: np.ndarray, tmp_path: Path
) -> None:
    prediction = _prediction(model, ct_series, (lesion,), masks[..., :1], slice_spacing=None)

    sr, _ = build_results(prediction, ct_series)

    report = read_report(sr, tmp_path)
    planar = report.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in planar] == ["lesion", "lesion (1)", "lesion (3)"]
    assert len({g.tracking_uid for g in planar}) == 3  # three findings, one per slice
    for group, index in zip(planar, (1, 0, 2), strict=True):
        assert region_reference(group) == (str(ct_series[index].SOPInstanceUID), [])
        outline = largest_outline(masks[index, ..., 0])
        assert outline is not None
        np.testing.assert_array_equal(group.roi.value, outline.points)
        assert value_of(group, codes.SCT.Area) == pytest.approx(masks[index, ..., 0].sum() * 0.25)
    (volumetric,) = report.get_volumetric_roi_measurement_groups()
    assert volumetric.tracking_uid == planar[0].tracking_uid
    assert volumetric.get_measurements() == []  # no volume without slice spacing


def test_empty_mask_is_reported_absent_and_left_out_of_the_seg(
    model: ModelIdentity,
    lesion: Label,
    organ: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    masks[..., 0] = False

    sr, seg = build_results(_prediction(model, ct_series, (lesion, organ), masks), ct_series)

    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver"]
    dciodvfy(seg, "seg")
    report = read_report(sr, tmp_path)
    absent, liver = report.get_planar_roi_measurement_groups()
    assert absent.tracking_identifier == "lesion: not found"
    assert absent.finding_type.value == lesion.finding.value
    assert evaluation_of(absent, absent.finding_type) == ABSENT
    assert value_of(absent, codes.DCM.ThresholdValue) == pytest.approx(40.0)
    assert [m.name.meaning for m in absent.get_measurements()] == ["Threshold Value"]
    assert liver.tracking_identifier == "liver"


def test_all_masks_empty_gives_a_visible_report_and_no_seg(
    model: ModelIdentity,
    lesion: Label,
    ct_series: list[Dataset],
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    masks = np.zeros((3, 128, 128, 1), dtype=bool)

    results = build_results(_prediction(model, ct_series, (lesion,), masks), ct_series)

    assert [ds.Modality for ds in results] == ["SR"]
    dciodvfy(results[0], "sr")
    (group,) = read_report(results[0], tmp_path).get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "lesion: not found"
    assert region_reference(group) == (str(ct_series[1].SOPInstanceUID), [])
    np.testing.assert_array_equal(group.roi.value, [[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]])
    finding = lesion.finding
    name = hd.sr.CodedConcept(finding.value, finding.scheme_designator, finding.meaning)
    assert evaluation_of(group, name) == ABSENT


def test_multi_frame_source_references_its_frames(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("eCT_Supplemental.dcm")
    masks = np.zeros((2, 512, 512, 1), dtype=bool)
    masks[1, 200:260, 300:340, 0] = True
    prediction = _prediction(model, [source], (lesion,), masks)

    sr, seg = build_results(prediction, [source])

    dciodvfy(seg, "seg")
    dciodvfy(sr, "sr")
    read = hd.seg.segread(saved(seg, tmp_path, "seg"))
    assert int(read.NumberOfFrames) == 1  # the empty first frame is omitted
    pixels = read.get_pixels_by_source_frame(
        str(source.SOPInstanceUID), [1, 2], combine_segments=False
    )
    np.testing.assert_array_equal(pixels.astype(bool), masks)
    (group,) = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    assert region_reference(group) == (str(source.SOPInstanceUID), [2])


def test_fractional_seg_keeps_probabilities(
    model: ModelIdentity,
    lesion: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    probabilities = np.zeros((3, 128, 128, 1), dtype=np.float32)
    probabilities[masks[..., :1]] = 0.8
    prediction = _prediction(
        model, ct_series, (lesion,), masks[..., :1], probabilities=probabilities
    )

    _, seg = build_results(prediction, ct_series, segmentation_kind="fractional")

    assert seg.SegmentationType == "FRACTIONAL"
    dciodvfy(seg, "seg")
    read = hd.seg.segread(saved(seg, tmp_path, "seg"))
    pixels = read.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in ct_series], combine_segments=False
    )
    np.testing.assert_allclose(pixels, probabilities, atol=1 / 255)


def test_fractional_without_probabilities_falls_back_to_binary(
    model: ModelIdentity,
    lesion: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prediction = _prediction(model, ct_series, (lesion,), masks[..., :1])

    with caplog.at_level(logging.WARNING, logger="sr_writer.seg"):
        _, seg = build_results(prediction, ct_series, segmentation_kind="FRACTIONAL")

    assert seg.SegmentationType == "BINARY"
    assert "gives no probabilities" in caplog.text


def test_source_without_frame_of_reference_still_gets_an_sr_saying_why(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("693_UNCI.dcm")  # CT, no Frame of Reference UID, identity removed
    masks = np.zeros((1, 512, 512, 1), dtype=bool)
    masks[0, 100:150, 200:260, 0] = True
    prediction = _prediction(model, [source], (lesion,), masks)

    results = build_results(prediction, [source])

    assert [ds.Modality for ds in results] == ["SR"]
    (sr,) = results
    assert sr.CompletionFlag == "PARTIAL"
    assert "SEG not written: source has no Frame of Reference UID" in sr.CompletionFlagDescription
    assert sr.PatientIdentityRemoved == "YES"
    assert "DeidentificationMethod" not in source
    assert sr.DeidentificationMethod == "Identity removed upstream; method not stated by source"
    dciodvfy(sr, "sr")
    report = read_report(sr, tmp_path)
    (group,) = report.get_planar_roi_measurement_groups()
    assert value_of(group, codes.SCT.Area) == pytest.approx(50 * 60 * 0.25)
    assert report.get_volumetric_roi_measurement_groups() == []


def test_japanese_source_keeps_its_character_set_and_name(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("J2K_pixelrep_mismatch.dcm")  # CT, ISO 2022 IR 13 / IR 87
    masks = np.zeros((1, source.Rows, source.Columns, 1), dtype=bool)
    masks[0, 100:140, 100:150, 0] = True

    results = build_results(_prediction(model, [source], (lesion,), masks), [source])

    for dataset, name in zip(results, ("sr", "seg"), strict=True):
        assert dataset.SpecificCharacterSet == source.SpecificCharacterSet
        dciodvfy(dataset, name)
        read = (
            hd.seg.segread(saved(dataset, tmp_path, name))
            if name == "seg"
            else hd.sr.srread(saved(dataset, tmp_path, name))
        )
        assert read.PatientName == source.PatientName


def test_retried_job_gets_identical_uids_and_another_version_does_not(
    model: ModelIdentity, lesion: Label, ct_series: list[Dataset], masks: np.ndarray
) -> None:
    prediction = _prediction(model, ct_series, (lesion,), masks[..., :1])
    newer = _prediction(
        ModelIdentity(name=model.name, version="1.3.0"), ct_series, (lesion,), masks[..., :1]
    )

    first, again, other = (build_results(p, ct_series) for p in (prediction, prediction, newer))

    uids = [[(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in r] for r in (first, again, other)]
    assert uids[0] == uids[1]
    assert not set(uids[0]) & set(uids[2])
    assert len({uid for pair in uids[0] for uid in pair}) == 4


def test_integer_masks_are_written_as_binary(
    model: ModelIdentity, lesion: Label, ct_series: list[Dataset], masks: np.ndarray, tmp_path: Path
) -> None:
    labelled = masks[..., :1].astype(np.int64) * 7  # a model giving label values, not bools
    prediction = _prediction(model, ct_series, (lesion,), labelled)  # type: ignore[arg-type]

    _, seg = build_results(prediction, ct_series)

    read = hd.seg.segread(saved(seg, tmp_path, "seg"))
    pixels = read.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in ct_series], combine_segments=False
    )
    np.testing.assert_array_equal(pixels, masks[..., :1].astype(pixels.dtype))


def test_multi_frame_source_without_geometry_still_gets_an_sr_saying_why(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("emri_small.dcm")  # enhanced MR without functional groups
    masks = np.zeros((10, 64, 64, 1), dtype=bool)
    masks[4, 10:30, 20:40, 0] = True

    results = build_results(_prediction(model, [source], (lesion,), masks), [source])

    assert [ds.Modality for ds in results] == ["SR"]
    assert results[0].CompletionFlagDescription.startswith(
        "SEG not written: source has no Image Orientation"
    )
    dciodvfy(results[0], "sr")
    (group,) = read_report(results[0], tmp_path).get_planar_roi_measurement_groups()
    assert region_reference(group) == (str(source.SOPInstanceUID), [5])
    assert value_of(group, codes.SCT.Volume) == pytest.approx(400 * 0.25 * 2.5)


def test_source_without_slice_thickness_takes_the_model_spacing(
    model: ModelIdentity,
    lesion: Label,
    ct_series: list[Dataset],
    masks: np.ndarray,
    dciodvfy: Validator,
) -> None:
    for ds in ct_series:
        del ds.SliceThickness

    _, seg = build_results(_prediction(model, ct_series, (lesion,), masks[..., :1]), ct_series)

    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == 2.5
    dciodvfy(seg, "seg")


def test_no_slice_thickness_anywhere_means_no_seg(
    model: ModelIdentity, lesion: Label, ct_series: list[Dataset], masks: np.ndarray
) -> None:
    for ds in ct_series:
        del ds.SliceThickness
    prediction = _prediction(model, ct_series, (lesion,), masks[..., :1], slice_spacing=None)

    results = build_results(prediction, ct_series)

    assert [ds.Modality for ds in results] == ["SR"]
    assert "no Slice Thickness" in results[0].CompletionFlagDescription


def _result_uids(results: list[Dataset]) -> set[str]:
    """Every UID a result names as its own: SOP instance, series and segment tracking."""
    uids = {str(ds.SOPInstanceUID) for ds in results} | {
        str(ds.SeriesInstanceUID) for ds in results
    }
    for ds in results:
        uids |= {str(segment.TrackingUID) for segment in ds.get("SegmentSequence", [])}
    return uids


def test_two_series_of_one_study_get_results_of_their_own(
    model: ModelIdentity, lesion: Label
) -> None:
    """One job may run a model on two series of a study: no result may replace another."""
    first = single_frame_series("CT_small.dcm", 3)
    second = single_frame_series("CT_small.dcm", 2)
    assert first[0].StudyInstanceUID == second[0].StudyInstanceUID
    assert first[0].SeriesInstanceUID != second[0].SeriesInstanceUID
    first_masks = np.zeros((3, 128, 128, 1), dtype=bool)
    first_masks[:, 40:60, 40:60, 0] = True
    second_masks = first_masks[:2].copy()

    first_results = build_results(_prediction(model, first, (lesion,), first_masks), first)
    second_results = build_results(_prediction(model, second, (lesion,), second_masks), second)
    again = build_results(_prediction(model, first, (lesion,), first_masks), first)

    assert [ds.Modality for ds in first_results] == ["SR", "SEG"]
    assert [ds.Modality for ds in second_results] == ["SR", "SEG"]
    assert not _result_uids(first_results) & _result_uids(second_results)
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in first_results]
    assert _result_uids(again) == _result_uids(first_results)


def _label_anchor(points: np.ndarray) -> tuple[float, float]:
    """Where OHIF anchors a region's label box: the middle of its right side."""
    return float(points[:, 0].max()), float((points[:, 1].min() + points[:, 1].max()) / 2)


def test_labels_not_found_on_one_image_get_regions_and_label_boxes_of_their_own(
    model: ModelIdentity,
    lesion: Label,
    organ: Label,
    ct_series: list[Dataset],
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    """A normal study: three frames on the key image, none on another, labels stacked."""
    bone = Label("bone", concept(codes.SCT.Bone), concept(codes.SCT.Tissue))
    masks = np.zeros((3, 128, 128, 3), dtype=bool)

    (sr,) = build_results(_prediction(model, ct_series, (lesion, organ, bone), masks), ct_series)

    dciodvfy(sr, "sr")
    groups = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "lesion: not found",
        "liver: not found",
        "bone: not found",
    ]
    key_image = (str(ct_series[1].SOPInstanceUID), [])
    assert [region_reference(g) for g in groups] == [key_image] * 3
    regions = [np.asarray(g.roi.value, dtype=np.float64) for g in groups]  # type: ignore[union-attr]
    np.testing.assert_array_equal(regions[0], [[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]])
    for index, region in enumerate(regions):
        for other in regions[index + 1 :]:
            assert not np.array_equal(region, other)
    for outer, inner in itertools.pairwise(regions):
        # Each frame strictly inside the one before: no two outlines share a side.
        assert inner[:, 0].min() > outer[:, 0].min() and inner[:, 0].max() < outer[:, 0].max()
        assert inner[:, 1].min() > outer[:, 1].min() and inner[:, 1].max() < outer[:, 1].max()
    anchors = [_label_anchor(region) for region in regions]
    rows = [row for _, row in anchors]
    # Label boxes a sixth of the image apart (half the height / 3 labels), top to bottom.
    assert np.diff(rows) == pytest.approx([128 / 6, 128 / 6])
