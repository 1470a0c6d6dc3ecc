"""Exclusive labels (softmax) as a label map: one segment per label present, 40 labels."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from inference import Label, ModelIdentity, Segmentation
from sr_writer import build_results
from tests.sr_writer.conftest import Validator
from tests.sr_writer.reading import evaluation_of, read_report, region_reference, saved, value_of
from tests.sr_writer.samples import concept, frame_refs, single_frame_series

ABSENT = "272519000"
LABELS = 40


def _labels() -> tuple[Label, ...]:
    return tuple(
        Label(
            name=f"structure {n:02d}",
            finding=concept(codes.SCT.AnatomicalStructure),
            category=concept(codes.SCT.AnatomicalStructure),
        )
        for n in range(1, LABELS + 1)
    )


@pytest.mark.slow  # highdicom builds and pydicom validates 70 measurement groups: ~15 s
def test_label_map_seg_and_sr_for_many_labels(
    model: ModelIdentity, dciodvfy: Validator, tmp_path: Path
) -> None:
    sources = single_frame_series("CT_small.dcm", 5)
    label_map = np.zeros((5, 128, 128), dtype=np.uint8)
    # Labels 1..30 as 4-pixel-wide bands, label k largest on slice k % 5; 31..40 absent.
    for k in range(1, 31):
        for frame in range(5):
            width = 2 + (3 if frame == k % 5 else 0)
            label_map[frame, 4 * k : 4 * k + 2, 10 : 10 + 10 * width] = k
    prediction = Segmentation(
        model=model,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=frame_refs(sources),
        labels=_labels(),
        masks=None,
        label_map=label_map,
        pixel_spacing_mm=(0.5, 0.5),
        slice_spacing_mm=2.5,
    )
    sr, seg = build_results(prediction, sources)
    dciodvfy(seg, "seg-labelmap")
    dciodvfy(sr, "sr-labelmap")

    read = hd.seg.segread(saved(seg, tmp_path, "seg"))
    names = [item.SegmentLabel for item in read.SegmentSequence]
    assert names == [f"structure {n:02d}" for n in range(1, 31)]
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    back = read.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    np.testing.assert_array_equal(back, label_map)  # segment k is label k here

    report = read_report(sr, tmp_path)
    planar = report.get_planar_roi_measurement_groups()
    volumetric = report.get_volumetric_roi_measurement_groups()
    found = {
        str(g.tracking_identifier): g
        for g in planar
        if "not found" not in str(g.tracking_identifier)
    }
    absent = [g for g in planar if "not found" in str(g.tracking_identifier)]
    assert len(found) == 30 and len(absent) == 10 and len(volumetric) == 30
    for group in absent:
        assert evaluation_of(group, hd.sr.CodedConcept(*_code())) == ABSENT
    voxel = 0.5 * 0.5 * 2.5
    for group in volumetric:
        k = int(str(group.tracking_identifier).split()[-1])
        assert value_of(group, codes.SCT.Volume) == pytest.approx(
            np.count_nonzero(label_map == k) * voxel
        )
        outline = found[str(group.tracking_identifier)]
        uid, _ = region_reference(outline)
        assert uid == uids[k % 5]  # drawn on the slice where the label is largest


def _code() -> tuple[str, str, str]:
    code = codes.SCT.AnatomicalStructure
    return code.value, code.scheme_designator, code.meaning
