"""Classification predictions: SR findings, heatmap overlays and Parametric Maps."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.sr.codedict import codes

from inference import Classification, FrameRef, Heatmap, Label, LabelScore, ModelIdentity
from sr_writer import build_results
from sr_writer.contour import largest_outline
from tests.sr_writer.conftest import Validator
from tests.sr_writer.reading import evaluation_of, read_report, region_reference, saved, value_of
from tests.sr_writer.samples import concept, frame_refs, load, single_frame_series

PRESENT, ABSENT = "52101004", "272519000"


def _heatmap(label: Label, source: Dataset, frame_number: int = 1) -> Heatmap:
    """A smooth blob: hot region (>= half its peak) is a disc of radius ~ 0.59 sigma*2."""
    rows, columns = int(source.Rows), int(source.Columns)
    yy, xx = np.mgrid[:rows, :columns]
    sigma = rows / 8
    values = np.exp(-((yy - rows / 3) ** 2 + (xx - columns / 2) ** 2) / (2 * sigma**2))
    return Heatmap(
        label=label,
        frame=FrameRef(str(source.SOPInstanceUID), frame_number),
        values=values.astype(np.float32),
    )


def _classification(
    model: ModelIdentity,
    sources: list[Dataset],
    scores: list[tuple[Label, float]],
    heatmaps: tuple[Heatmap, ...] = (),
) -> Classification:
    return Classification(
        model=model,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=frame_refs(sources),
        scores=tuple(
            LabelScore(label=label, probability=p, positive=p >= label.threshold)
            for label, p in scores
        ),
        heatmaps=heatmaps,
    )


@pytest.fixture
def nodule() -> Label:
    return Label(
        name="nodule",
        finding=concept(codes.SCT.Nodule),
        category=concept(codes.SCT.MorphologicallyAbnormalStructure),
        threshold=0.5,
    )


def test_positive_label_is_drawn_as_the_heatmap_hot_region(
    model: ModelIdentity,
    lesion: Label,
    nodule: Label,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    source = load("CT_small.dcm")
    heatmap = _heatmap(lesion, source)
    prediction = _classification(model, [source], [(lesion, 0.87), (nodule, 0.12)], (heatmap,))

    sr, overlay = build_results(prediction, [source])

    dciodvfy(sr, "sr")
    report = read_report(sr, tmp_path)
    group, negative = report.get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "lesion"
    assert region_reference(group) == (str(source.SOPInstanceUID), [])
    hot = largest_outline(heatmap.values >= 0.5 * heatmap.values.max())
    assert hot is not None
    np.testing.assert_array_equal(group.roi.value, hot.points)  # type: ignore[union-attr]
    assert value_of(group, codes.DCM.Probability) == pytest.approx(87.0)
    assert value_of(group, codes.DCM.ThresholdValue) == pytest.approx(40.0)
    assert evaluation_of(group, group.finding_type) == PRESENT  # type: ignore[arg-type]
    assert negative.tracking_identifier == "nodule: not found"
    assert negative.finding_type.value == nodule.finding.value  # type: ignore[union-attr]
    assert evaluation_of(negative, negative.finding_type) == ABSENT  # type: ignore[arg-type]
    assert value_of(negative, codes.DCM.Probability) == pytest.approx(12.0)
    assert overlay.Modality == "OT"


def test_overlay_is_an_rgb_secondary_capture_labelled_as_ai(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("CT_small.dcm")
    heatmap = _heatmap(lesion, source)

    _, overlay = build_results(
        _classification(model, [source], [(lesion, 0.9)], (heatmap,)), [source]
    )

    warnings = dciodvfy(overlay, "overlay")
    expected = ("PatientWeight", "Laterality")  # source's zero weight; laterality unknown
    assert not [w for w in warnings if not any(word in w for word in expected)]
    assert overlay.SeriesDescription == "AI overlay - demo-ct-lesion 1.2.0 - not for clinical use"
    assert overlay.SeriesInstanceUID != source.SeriesInstanceUID
    assert overlay.StudyInstanceUID == source.StudyInstanceUID
    assert overlay.PhotometricInterpretation == "RGB"
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert overlay.PatientOrientation == ["L", "P"]  # axial CT_small
    pixels = hd.imread(saved(overlay, tmp_path, "overlay")).pixel_array
    assert pixels.shape == (128, 128, 3)
    hot = pixels[int(128 / 3), 64]
    cold = pixels[120, 5]
    assert hot[0] > hot[2] and cold[0] == cold[1] == cold[2]  # red where hot, gray elsewhere


def test_parametric_map_carries_the_raw_values(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("CT_small.dcm")
    heatmap = _heatmap(lesion, source)
    prediction = _classification(model, [source], [(lesion, 0.9)], (heatmap,))

    sr, overlay, parametric_map = build_results(prediction, [source], parametric_map=True)

    dciodvfy(parametric_map, "pm")
    assert sr.CompletionFlag == "COMPLETE"
    read = hd.imread(saved(parametric_map, tmp_path, "pm"))
    np.testing.assert_allclose(read.pixel_array, heatmap.values)
    assert read.SeriesDescription.startswith("AI heatmap - demo-ct-lesion")
    assert len({sr.SeriesInstanceUID, overlay.SeriesInstanceUID, read.SeriesInstanceUID}) == 3


def test_negative_study_draws_each_label_as_not_found(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("MR_small.dcm")

    results = build_results(_classification(model, [source], [(lesion, 0.1)]), [source])

    assert [ds.Modality for ds in results] == ["SR"]
    dciodvfy(results[0], "sr")
    (group,) = read_report(results[0], tmp_path).get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "lesion: not found"
    assert evaluation_of(group, group.finding_type) == ABSENT  # type: ignore[arg-type]
    assert value_of(group, codes.DCM.Probability) == pytest.approx(10.0)
    np.testing.assert_array_equal(group.roi.value, [[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]])  # type: ignore[union-attr]


def test_multi_frame_deidentified_source_keeps_frame_and_deidentification(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("emri_small.dcm")  # enhanced MR, 10 frames, identity removed
    heatmap = _heatmap(lesion, source, frame_number=4)
    prediction = _classification(model, [source], [(lesion, 0.7)], (heatmap,))

    sr, overlay = build_results(prediction, [source], parametric_map=True)

    for dataset in (sr, overlay):
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.DeidentificationMethod == source.DeidentificationMethod
    dciodvfy(sr, "sr")
    dciodvfy(overlay, "overlay")
    assert overlay.SourceImageSequence[0].ReferencedFrameNumber == 4
    (group,) = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    assert region_reference(group) == (str(source.SOPInstanceUID), [4])
    assert sr.CompletionFlag == "PARTIAL"  # emri_small has no per-frame geometry
    assert sr.CompletionFlagDescription.startswith("Parametric Map not written")


@pytest.mark.parametrize(
    ("name", "expected_character_set"),
    [("chrH31.dcm", ["ISO 2022 IR 6", "ISO 2022 IR 87"]), ("chrGreek.dcm", "ISO_IR 126")],
)
def test_foreign_character_sets_survive(
    name: str,
    expected_character_set: str | list[str],
    model: ModelIdentity,
    lesion: Label,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    source = load(name)  # Secondary Captures with Japanese / Greek patient names
    heatmap = _heatmap(lesion, source)
    prediction = _classification(model, [source], [(lesion, 0.95)], (heatmap,))

    results = build_results(prediction, [source])

    assert [ds.Modality for ds in results] == ["SR", "OT"]
    for index, dataset in enumerate(results):
        assert dataset.SpecificCharacterSet == expected_character_set
        dciodvfy(dataset, f"{name}-{index}")
        assert hd.imread(saved(dataset, tmp_path, f"{index}")).PatientName == source.PatientName
    report = read_report(results[0], tmp_path)
    (group,) = report.get_planar_roi_measurement_groups()
    assert region_reference(group) == (str(source.SOPInstanceUID), [])


def test_positive_without_heatmap_outlines_the_whole_image(
    model: ModelIdentity, lesion: Label, tmp_path: Path
) -> None:
    source = load("CT_small.dcm")

    results = build_results(_classification(model, [source], [(lesion, 0.9)]), [source])

    assert len(results) == 1
    (group,) = read_report(results[0], tmp_path).get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "lesion"
    np.testing.assert_array_equal(group.roi.value, [[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]])  # type: ignore[union-attr]


def test_heatmap_of_wrong_shape_is_refused(model: ModelIdentity, lesion: Label) -> None:
    source = load("CT_small.dcm")
    heatmap = Heatmap(lesion, FrameRef(str(source.SOPInstanceUID)), np.zeros((64, 64), np.float32))

    with pytest.raises(ValueError, match=r"heatmap of 'lesion' has shape \(64, 64\)"):
        build_results(_classification(model, [source], [(lesion, 0.9)], (heatmap,)), [source])


def test_source_without_pixels_still_gets_its_report(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator
) -> None:
    source = load("CT_small.dcm")
    heatmap = _heatmap(lesion, source)
    del source.PixelData

    results = build_results(_classification(model, [source], [(lesion, 0.9)], (heatmap,)), [source])

    assert [ds.Modality for ds in results] == ["SR"]
    assert results[0].CompletionFlag == "PARTIAL"
    assert results[0].CompletionFlagDescription.startswith("heatmap overlay not written")
    dciodvfy(results[0], "sr")


def test_palette_colour_source_shows_its_colours_not_its_indices(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator
) -> None:
    source = load("OBXXXX1A.dcm")  # ultrasound, PALETTE COLOR, no Frame of Reference
    heatmap = _heatmap(lesion, source)
    heatmap.values[:] = 0.0  # nothing overlaid: the image must be the palette's colours

    _, overlay = build_results(
        _classification(model, [source], [(lesion, 0.9)], (heatmap,)), [source]
    )

    dciodvfy(overlay, "overlay")
    below_caption = slice(120, None)
    shown = overlay.pixel_array[below_caption].astype(float).mean(axis=-1)
    luminance = apply_color_lut(source.pixel_array, source)[below_caption].mean(axis=-1)
    assert np.corrcoef(shown.ravel(), luminance.ravel())[0, 1] > 0.95  # indices: 0.75


def test_overlay_burns_its_caption_in_when_the_image_is_big_enough(
    model: ModelIdentity, lesion: Label
) -> None:
    big, small = load("693_UNCI.dcm"), load("CT_small.dcm")  # 512 and 128 pixels a side
    overlays = [
        build_results(_classification(model, [s], [(lesion, 0.9)], (_heatmap(lesion, s),)), [s])[1]
        for s in (big, small)
    ]

    assert [o.BurnedInAnnotation for o in overlays] == ["YES", "NO"]
    corner = overlays[0].pixel_array[:60, :200].astype(int)
    assert (corner >= 230).all(axis=-1).sum() > 100  # white caption text


def test_parametric_map_on_a_frame_of_a_multi_frame_source(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("eCT_Supplemental.dcm")  # enhanced CT, 2 frames, functional groups
    heatmap = _heatmap(lesion, source, frame_number=2)

    sr, overlay, parametric_map = build_results(
        _classification(model, [source], [(lesion, 0.9)], (heatmap,)), [source], parametric_map=True
    )

    dciodvfy(parametric_map, "pm")
    assert sr.CompletionFlag == "COMPLETE"
    read = hd.imread(saved(parametric_map, tmp_path, "pm"))
    np.testing.assert_allclose(read.pixel_array, heatmap.values)
    frame_two = source.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    written = read.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in written.ImagePositionPatient],
        [float(v) for v in frame_two.ImagePositionPatient],
    )
    assert overlay.SourceImageSequence[0].ReferencedFrameNumber == 2


@pytest.mark.parametrize(
    ("cosines", "expected"),
    [
        ([0.866025, 0.5, 0.0, -0.5, 0.866025, 0.0], ["LP", "PR"]),  # axial, rotated 30 degrees
        (None, []),  # no orientation at all: unknown, not guessed
    ],
)
def test_overlay_patient_orientation(
    cosines: list[float] | None,
    expected: list[str] | str,
    model: ModelIdentity,
    lesion: Label,
    dciodvfy: Validator,
) -> None:
    source = load("CT_small.dcm")
    if cosines is None:
        del source.ImageOrientationPatient
    else:
        source.ImageOrientationPatient = cosines

    _, overlay = build_results(
        _classification(model, [source], [(lesion, 0.9)], (_heatmap(lesion, source),)), [source]
    )

    assert overlay.PatientOrientation == expected
    dciodvfy(overlay, "overlay")


def test_korean_character_set_highdicom_does_not_know_survives(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator, tmp_path: Path
) -> None:
    source = load("chrI2.dcm")  # ISO 2022 IR 149, not in highdicom's list

    results = build_results(
        _classification(model, [source], [(lesion, 0.9)], (_heatmap(lesion, source),)), [source]
    )

    for index, dataset in enumerate(results):
        assert dataset.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 149"]
        dciodvfy(dataset, f"korean-{index}")
        assert hd.imread(saved(dataset, tmp_path, f"{index}")).PatientName == source.PatientName


def test_source_without_type2_patient_attributes_gets_its_report(
    model: ModelIdentity, lesion: Label, dciodvfy: Validator
) -> None:
    source = load("CT_small.dcm")
    del source.PatientID, source.StudyID, source.AccessionNumber

    sr, _ = build_results(
        _classification(model, [source], [(lesion, 0.9)], (_heatmap(lesion, source),)), [source]
    )

    assert (sr.PatientID, sr.StudyID, sr.AccessionNumber) == ("", "", "")
    assert "PatientID" not in source  # the caller's dataset is untouched
    dciodvfy(sr, "sr")


def test_heatmaps_of_two_series_of_one_study_get_uids_of_their_own(
    model: ModelIdentity, lesion: Label
) -> None:
    """SR, overlay and Parametric Map of each series: distinct, and stable on a re-run."""
    first = single_frame_series("CT_small.dcm", 1)
    second = single_frame_series("CT_small.dcm", 2)
    assert first[0].StudyInstanceUID == second[0].StudyInstanceUID

    def run(sources: list[Dataset]) -> list[Dataset]:
        heatmap = _heatmap(lesion, sources[0])
        prediction = _classification(model, sources, [(lesion, 0.9)], (heatmap,))
        return build_results(prediction, sources, parametric_map=True)

    first_results, second_results, again = run(first), run(second), run(first)

    assert [ds.SOPClassUID.name for ds in first_results] == [
        "Comprehensive 3D SR Storage",
        "Secondary Capture Image Storage",
        "Parametric Map Storage",
    ]
    for kind, (a, b, c) in enumerate(zip(first_results, second_results, again, strict=True)):
        assert a.SOPInstanceUID != b.SOPInstanceUID, kind
        assert a.SeriesInstanceUID != b.SeriesInstanceUID, kind
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (c.SOPInstanceUID, c.SeriesInstanceUID)


def test_labels_drawn_around_the_key_image_do_not_coincide(
    model: ModelIdentity,
    lesion: Label,
    nodule: Label,
    organ: Label,
    dciodvfy: Validator,
    tmp_path: Path,
) -> None:
    """A positive label without a heatmap and two negatives: three frames, three label rows."""
    source = load("MR_small.dcm")  # 64 x 64
    prediction = _classification(model, [source], [(lesion, 0.9), (nodule, 0.1), (organ, 0.2)])

    (sr,) = build_results(prediction, [source])

    dciodvfy(sr, "sr")
    groups = read_report(sr, tmp_path).get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "lesion",
        "nodule: not found",
        "liver: not found",
    ]
    regions = [np.asarray(g.roi.value, dtype=np.float64) for g in groups]  # type: ignore[union-attr]
    assert not np.array_equal(regions[0], regions[1])
    assert not np.array_equal(regions[1], regions[2])
    assert not np.array_equal(regions[0], regions[2])
    # OHIF anchors each label box at the middle of the region's right side.
    middles = [(r[:, 1].min() + r[:, 1].max()) / 2 for r in regions]
    assert np.diff(middles) == pytest.approx([64 / 6, 64 / 6])
