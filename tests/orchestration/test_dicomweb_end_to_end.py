"""DICOMweb both ways with a real archive: Orthanc's DICOMweb client sends a CT study to
the node's STOW-RS endpoint over HTTPS with a bearer token (its ``DicomWeb.Servers`` and
``/dicom-web/servers/{name}/stow``); the node completes it by QIDO-RS counts, runs the
demo model and delivers the SR and SEG back to Orthanc by STOW-RS."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.db.schema import Study
from dicom_node.db.sessions import create_db_engine, session_factory
from tests.conftest import get_free_port
from tests.node.test_tls import make_pki
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import instance, referenced_series, series_by_modality
from tests.orchestration.studies import ct_series
from tests.peers import have_dicomweb_plugin, have_orthanc, run_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (have_orthanc() and have_dicomweb_plugin()),
        reason="Orthanc with its DICOMweb plugin is not installed",
    ),
]

RESULT_TIMEOUT_S = 120.0
TOKEN = "orthanc-sends-with-this"


def completion_reason(database: Path, study_uid: str) -> str | None:
    engine = create_db_engine(f"sqlite:///{database}")
    try:
        with session_factory(engine)() as session:
            return session.scalar(
                select(Study.completion_reason).where(Study.study_instance_uid == study_uid)
            )
    finally:
        engine.dispose()


def test_orthanc_stows_a_study_and_gets_sr_and_seg_back_by_stow(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "tokens").write_text(f"{TOKEN}\n")
    port, web_port = get_free_port(), get_free_port()
    node_server = {
        "Url": f"https://127.0.0.1:{web_port}/",
        "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
    }
    https = {"HttpsCACertificates": str(pki / "ca.crt"), "HttpsVerifyPeers": True}
    ct = ct_series(tmp_path / "ct", 6, template="693_UNCI.dcm")
    study_uid = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    source_series = str(pydicom.dcmread(ct[0]).SeriesInstanceUID)
    with run_orthanc(
        tmp_path, dicomweb=True, dicomweb_servers={"node": node_server}, extra=https
    ) as pacs:
        document = node_document(
            tmp_path,
            pacs=pacs,
            port=port,
            peers=[{"name": "pacs", "kind": "dicomweb", "url": pacs.dicomweb_url}],
            completion={"query_peer": "pacs", "min_seconds": 0, "stable_seconds": 60},
            routes=[
                {
                    "name": "ct",
                    "models": ["demo-ct-bone"],
                    "match": {"Modality": "CT"},
                    "destinations": ["pacs"],
                }
            ],
            dicomweb={
                "enabled": True,
                "host": "127.0.0.1",
                "port": web_port,
                "tokens_file": tmp_path / "tokens",
                "tls": {"cert_file": pki / "node.crt", "key_file": pki / "node.key"},
            },
        )
        config = write_config(tmp_path / "node.toml", document)
        with run_node(config, port=port) as node:
            [study_id] = {pacs.rest("GET", f"/instances/{i}/study")["ID"] for i in pacs.upload(ct)}
            pacs.rest("POST", "/dicom-web/servers/node/stow", {"Resources": [study_id]})
            wait_until(
                lambda: {"SR", "SEG"} <= set(series_by_modality(pacs, study_uid)),
                RESULT_TIMEOUT_S,
                lambda: f"SR and SEG back in Orthanc; node log:\n{node.log_text()}",
            )
            log = node.log_text()
        found = series_by_modality(pacs, study_uid)
        for modality in ("SR", "SEG"):
            [result] = found[modality]
            _, dataset = instance(pacs, result, tmp_path / "results")
            assert source_series in referenced_series(dataset), modality
    assert "STOW-RS request stored" in log and " ERROR " not in log, log
    assert completion_reason(tmp_path / "node.db", study_uid) == "QIDO-RS counts match 6/6"
