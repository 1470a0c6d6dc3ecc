"""A bundle as a user deploys it: ``dicom-node import-model``, ``dicom-node models``, and
the node serving it: Orthanc sends a real CT and gets a SEG and an SR that pass
``dciodvfy``, naming the imported model and its version."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicom_node.cli import main
from tests.conftest import get_free_port
from tests.importers.sources import write_bundle
from tests.inference.volume_data import real_ct_stack, save_stack
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import (
    dciodvfy_errors,
    instance,
    referenced_series,
    series_by_modality,
)
from tests.peers import Orthanc, have_orthanc, run_orthanc

pytestmark = pytest.mark.slow  # trains the test network once per session (seconds)

RESULT_TIMEOUT_S = 180.0


def imported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    bundle = write_bundle(tmp_path / "soft_tissue_bone_ct")
    package = tmp_path / "models" / "soft-tissue-bone"
    assert main(["import-model", "monai-bundle", str(bundle), "--out", str(package)]) == 0
    out = capsys.readouterr().out
    assert "parity model.onnx: max |source - ONNX Runtime|" in out
    assert "labels with a generic concept (no --labels entry): ['soft_tissue', 'bone']" in out
    assert f"{package}: soft_tissue_bone_ct 0.3.1" in out
    return package


def node_config(tmp_path: Path, package: Path, pacs: Orthanc | None, port: int | None) -> Path:
    """The node's config with the imported package routed for CT to the PACS."""
    document = node_document(
        tmp_path,
        pacs=pacs,
        port=port,
        models=[{"name": "imported", "path": package, "backend": "onnxruntime"}],
        routes=[
            {
                "name": "ct",
                "models": ["imported"],
                "match": {"Modality": "CT"},
                "destinations": ["pacs"],
            }
        ],
    )
    return write_config(tmp_path / "node.toml", document)


def test_import_model_errors_name_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    status = main(["import-model", "monai-bundle", str(tmp_path / "empty"), "--out", "x"])
    assert status == 1
    assert "import-model: " in capsys.readouterr().err
    nnunet = ["import-model", "nnunet", str(tmp_path / "empty"), "--configuration", "3d_fullres"]
    assert main([*nnunet, "--out", str(tmp_path / "pkg")]) == 1
    assert "needs plans.json here or in exactly one" in capsys.readouterr().err


def test_models_shows_where_an_imported_package_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = imported(tmp_path, capsys)
    config = node_config(tmp_path, package, None, None)
    assert main(["models", "-c", str(config), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["origin"]["kind"] == "monai-bundle"
    assert row["origin"]["name"] == "Test soft tissue and bone CT segmentation"
    assert row["origin"]["license_file"] == "LICENSE"
    assert main(["models", "-c", str(config)]) == 0
    assert (
        "; from monai-bundle Test soft tissue and bone CT segmentation 0.3.1 (licence: LICENSE)"
        in capsys.readouterr().out
    )


@pytest.mark.integration
@pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")
def test_orthanc_sends_a_ct_and_gets_seg_and_sr_from_the_imported_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = imported(tmp_path, capsys)
    stack = real_ct_stack(30, step_mm=2.5, shuffle=False)
    files = sorted(save_stack(stack, tmp_path / "ct").iterdir())
    study_uid, series_uid = str(stack[0].StudyInstanceUID), str(stack[0].SeriesInstanceUID)
    port = get_free_port()
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        config = node_config(tmp_path, package, pacs, port)
        with run_node(config, port=port) as node:
            pacs.store("node", pacs.upload(files))
            wait_until(
                lambda: {"SR", "SEG"} <= set(series_by_modality(pacs, study_uid)),
                RESULT_TIMEOUT_S,
                lambda: f"SR and SEG in Orthanc; node log:\n{node.log_text()}",
            )
            log = node.log_text()
        assert " ERROR " not in log, log
        found = series_by_modality(pacs, study_uid)
        for modality in ("SEG", "SR"):
            (instance_id,) = found[modality]
            path, dataset = instance(pacs, instance_id, tmp_path / "results")
            assert dciodvfy_errors(path) == [], (modality, dciodvfy_errors(path))
            assert series_uid in referenced_series(dataset)
            if modality == "SEG":
                assert (dataset.ManufacturerModelName, dataset.SoftwareVersions) == (
                    "soft_tissue_bone_ct",
                    "0.3.1",
                )
                labels = [s.SegmentLabel for s in dataset.SegmentSequence]
                assert set(labels) <= {"soft_tissue", "bone"} and labels
                assert len(dataset.PerFrameFunctionalGroupsSequence) <= len(stack) * len(labels)
            else:
                assert "soft_tissue_bone_ct" in str(pydicom.dcmread(path))
