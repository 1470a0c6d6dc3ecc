"""A windowed 3D run all the way to a SEG that overlays its source slices exactly."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from inference import load_model
from sr_writer import build_results
from tests.inference.volume_data import oblique, package_toml, real_ct_stack, write_package

SCALE_RANGE = 'method = "scale_range"\na_min = -1000.0\na_max = 1000.0\nclip = true'


@pytest.mark.parametrize(
    ("orientation", "tilt"),
    [pytest.param(oblique(15.0), 0.0, id="oblique"), pytest.param(None, 0.6, id="gantry-tilt")],
)
def test_seg_read_back_maps_every_frame_to_its_source_slice(
    tmp_path: Path, orientation: tuple[float, ...] | None, tilt: float
) -> None:
    options = {"orientation": orientation} if orientation else {}
    datasets = real_ct_stack(14, step_mm=2.5, tilt_mm=tilt, **options)  # type: ignore[arg-type]
    toml_text = package_toml(
        geometry='orientation = "RAS"\nspacing = [1.5, 1.5, 2.0]',
        window="overlap = 0.25\nbatch = 2",
        intensity=SCALE_RANGE,
    )
    package = write_package(tmp_path / "pkg", toml_text)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(datasets)
    assert prediction.label_map is not None
    sr, seg = build_results(prediction, datasets)
    assert sr.CompletionFlag == "COMPLETE"
    for result in (sr, seg):
        assert "not for clinical use" in result.SeriesDescription.lower()
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    read = hd.seg.segread(path)
    uids = [ref.sop_instance_uid for ref in prediction.frames]
    back = read.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    np.testing.assert_array_equal(back, prediction.label_map)
    # Every SEG frame names the source instance whose pixels it covers.
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for item in read.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx(
            [float(v) for v in by_uid[source].ImagePositionPatient], abs=1e-3
        )
    volume = prediction.voxel_volume_mm3
    assert volume == pytest.approx(0.661468**2 * 2.5, rel=1e-4)
