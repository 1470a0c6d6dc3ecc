"""The 3D demo package end to end: Orthanc sends a real CT, SEG and SR come back.

The node runs ``demo-ct-body3d`` (RAS, 1.5 mm, 64^3 windows) as ``dicom-node serve``;
the SEG and SR it sends to Orthanc pass ``dciodvfy`` and the SEG, read back with
highdicom, overlays its source slices voxel for voxel with what the model gives for
the same files in this process.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference import load_model
from tests.conftest import get_free_port
from tests.inference.volume_data import oblique, real_ct_stack, save_stack
from tests.orchestration.node import MODELS, node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import dciodvfy_errors, instance, series_by_modality
from tests.peers import have_orthanc, run_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed"),
]

DEMO_3D = MODELS / "demo-ct-body3d"


def test_real_ct_comes_back_with_a_seg_on_its_own_slices(tmp_path: Path) -> None:
    port = get_free_port()
    stack = real_ct_stack(20, template="693_UNCI.dcm", step_mm=2.5, orientation=oblique(10.0))
    files = sorted(save_stack(stack, tmp_path / "ct").glob("*.dcm"))
    study_uid = str(stack[0].StudyInstanceUID)
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        document = node_document(
            tmp_path,
            pacs=pacs,
            port=port,
            models=[{"name": "demo-ct-body3d", "path": DEMO_3D, "backend": "onnxruntime"}],
            routes=[
                {
                    "name": "ct",
                    "models": ["demo-ct-body3d"],
                    "match": {"Modality": "CT"},
                    "destinations": ["pacs"],
                }
            ],
        )
        config = write_config(tmp_path / "node.toml", document)
        with run_node(config, port=port) as node:
            pacs.store("node", pacs.upload(files))
            wait_until(
                lambda: {"SR", "SEG"} <= set(series_by_modality(pacs, study_uid)),
                180.0,
                lambda: f"SR and SEG in Orthanc; node log:\n{node.log_text()}",
            )
            log = node.log_text()
        found = series_by_modality(pacs, study_uid)
        received = {
            modality: instance(pacs, found[modality][0], tmp_path / "results")
            for modality in ("SR", "SEG")
        }
    assert " ERROR " not in log, log
    for modality, (path, dataset) in received.items():
        assert dciodvfy_errors(path) == [], (modality, dciodvfy_errors(path))
        assert "not for clinical use" in str(dataset.SeriesDescription).lower()
    seg = hd.seg.segread(received["SEG"][0])
    sources = [pydicom.dcmread(path) for path in files]
    with load_model(DEMO_3D, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(sources)
    assert prediction.label_map is not None
    uids = [ref.sop_instance_uid for ref in prediction.frames]
    numbers = {item.SegmentLabel: int(item.SegmentNumber) for item in seg.SegmentSequence}
    back = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    expected = np.zeros_like(prediction.label_map)
    for index, label in enumerate(prediction.labels, start=1):
        if label.name in numbers:
            expected[prediction.label_map == index] = numbers[label.name]
    np.testing.assert_array_equal(back, expected)
    assert numbers, "the demo found nothing on a real CT"
