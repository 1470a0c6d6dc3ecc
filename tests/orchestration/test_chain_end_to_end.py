"""Chained models end to end: Orthanc sends a CT study, the node runs two chains and
sends each step's results back as it finishes.

- route ``gate``: a classifier finds "liver", which gates a segmenter; its "lung" is not
  found, so the step gated on it is not run (skipped with the reason);
- route ``mask``: a bone segmenter's mask restricts a soft-tissue segmenter, which then
  finds exactly the bone, on the same source slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.conftest import get_free_port
from tests.orchestration.chain_models import classifier_package, threshold_package
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import dciodvfy_errors, instance, series_by_modality
from tests.orchestration.studies import ct_series
from tests.orchestration.test_chain import comments, observer_model
from tests.orchestration.test_end_to_end import audit_history, status, uids
from tests.peers import Orthanc, have_orthanc, run_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed"),
]

RESULT_TIMEOUT_S = 120.0


def chain_document(workdir: Path, pacs: Orthanc, port: int) -> dict[str, Any]:
    """The node's config: two chained routes on CT over small packages built here."""
    packages = workdir / "packages"
    paths = {
        "finds-liver": classifier_package(
            packages / "finds-liver", "finds-liver", {"liver": 4.0, "lung": -4.0}
        ),
        "finds-nothing": classifier_package(
            packages / "finds-nothing", "finds-nothing", {"liver": -4.0, "lung": -4.0}
        ),
        "dense": threshold_package(packages / "dense", "dense-seg", 300.5, "dense"),
        "bone": threshold_package(packages / "bone", "bone-seg", 300.5, "dense"),
        "soft": threshold_package(packages / "soft", "soft-seg", -200.5, "soft"),
    }
    models = [{"name": n, "path": p, "backend": "onnxruntime"} for n, p in paths.items()]
    routes = [
        {
            "name": "gate",
            "match": {"Modality": "CT"},
            "destinations": ["pacs"],
            "steps": [
                {"name": "classify", "model": "finds-liver"},
                {"name": "organ", "model": "dense", "when": {"step": "classify", "label": "liver"}},
                {
                    "name": "lung",
                    "model": "finds-nothing",
                    "when": {"step": "classify", "label": "lung"},
                },
            ],
        },
        {
            "name": "mask",
            "match": {"Modality": "CT"},
            "destinations": ["pacs"],
            "steps": [
                {"name": "bone", "model": "bone"},
                {"name": "inside", "model": "soft", "input_mask": "bone:dense"},
            ],
        },
    ]
    return node_document(workdir, pacs=pacs, port=port, models=models, routes=routes)


def seg_pixels(seg: pydicom.Dataset, sop_uids: list[str]) -> np.ndarray:
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, assert_missing_frames_are_empty=True
    )
    return np.asarray(pixels[..., 0] > 0)


def test_a_finding_gates_and_a_mask_restricts_the_next_model(tmp_path: Path) -> None:
    port = get_free_port()
    files = ct_series(tmp_path / "ct", 3)
    study_uid, source_series = uids(files[0])
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        document = chain_document(tmp_path, pacs, port)
        config = write_config(tmp_path / "node.toml", document)
        with run_node(config, port=port) as node:
            pacs.store("node", pacs.upload(files))
            # classify, organ, bone, inside: an SR each; organ, bone, inside: a SEG each.
            wait_until(
                lambda: (
                    len((found := series_by_modality(pacs, study_uid)).get("SR", [])) == 4
                    and len(found.get("SEG", [])) == 3
                ),
                RESULT_TIMEOUT_S,
                lambda: f"4 SR and 3 SEG in Orthanc; node log:\n{node.log_text()}",
            )
            report = status(config)
            log = node.log_text()
        results = {
            modality: [instance(pacs, i, tmp_path / "results") for i in ids]
            for modality, ids in series_by_modality(pacs, study_uid).items()
            if modality in ("SR", "SEG")
        }
    history = audit_history(config, study_uid)
    assert " ERROR " not in log, log
    for path, _ in [*results["SR"], *results["SEG"]]:
        assert dciodvfy_errors(path) == [], (path, dciodvfy_errors(path))

    # Each step's SR names its model; a later step's says how it came to run.
    reports = {observer_model(ds): ds for _, ds in results["SR"]}
    assert set(reports) == {"finds-liver 0.1", "dense-seg 0.1", "bone-seg 0.1", "soft-seg 0.1"}
    assert "Condition: 'liver' present" in comments(reports["dense-seg 0.1"])
    assert any("restricted to the 'dense' segment" in t for t in comments(reports["soft-seg 0.1"]))

    # The mask restricted the soft-tissue model to the bone, on the same source slices.
    segs = {str(ds.ManufacturerModelName): ds for _, ds in results["SEG"]}
    sop_uids = [
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files
    ]
    bone, inside = seg_pixels(segs["bone-seg"], sop_uids), seg_pixels(segs["soft-seg"], sop_uids)
    assert bone.any() and np.array_equal(inside, bone)

    # status shows each step, the one not run with why.
    by_name = {key.split(" ", 2)[2]: value for key, value in report["chains"].items()}
    assert by_name["gate/classify (finds-liver)"] == "done"
    assert by_name["gate/organ (dense)"].startswith("done after job ")
    lung = by_name["gate/lung (finds-nothing)"]
    assert lung.startswith("skipped after job ")
    assert lung.endswith(f"series {source_series}: step 'classify' did not find 'lung'")
    assert by_name["mask/bone (bone)"] == "done"
    assert by_name["mask/inside (soft)"].startswith("done after job ")
    assert report["jobs"]["failed"] == 0 and report["deliveries"]["failed"] == 0

    # ...and so does the audit trail.
    chain_steps = [line for line in history if line["event"] == "chain-step"]
    assert sorted((line["route"], line["step"], line["outcome"]) for line in chain_steps) == [
        ("gate", "lung", "skipped"),
        ("gate", "organ", "queued"),
        ("mask", "inside", "queued"),
    ]
    ran = {line.get("step") for line in history if line["event"] == "job-run"}
    assert {"organ", "inside"} <= ran
