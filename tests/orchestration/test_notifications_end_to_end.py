"""End to end with Orthanc: a study's results reach the archive, then a signed webhook and
a FHIR server hear about it, once each, from a real ``dicom-node serve``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import get_free_port
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.receivers import run_fhir_server, run_receiver
from tests.orchestration.studies import ct_series, radiograph
from tests.orchestration.test_end_to_end import audit_history, status, uids
from tests.peers import Orthanc, have_orthanc, run_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed"),
]

TIMEOUT_S = 180.0
SECRET = "end-to-end-secret"


def held_by(pacs: Orthanc, sop_uid: str) -> bool:
    found = pacs.rest("POST", "/tools/lookup", sop_uid.encode())
    return any(item["Type"] == "Instance" for item in found or [])


def test_webhook_and_fhir_hear_of_results_the_archive_already_holds(tmp_path: Path) -> None:
    port = get_free_port()
    secret_file = tmp_path / "secrets" / "hook"
    secret_file.parent.mkdir()
    secret_file.write_text(SECRET + "\n")
    not_yet_in_archive: list[str] = []
    lock = threading.Lock()
    with (
        run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs,
        run_receiver(secret=SECRET) as hook,
        run_fhir_server() as fhir,
    ):

        def check_archive(document: dict[str, Any]) -> None:
            for result in document["results"]:
                if not held_by(pacs, result["sop_instance_uid"]):
                    with lock:
                        not_yet_in_archive.append(result["sop_instance_uid"])

        hook.on_accept = check_archive
        entries = [
            {
                "name": "ris",
                "kind": "webhook",
                "url": hook.url,
                "allow_plain_http": True,
                "secret_file": secret_file,
            },
            {"name": "emr", "kind": "fhir", "url": fhir.url, "allow_plain_http": True},
        ]
        document = node_document(tmp_path, pacs=pacs, port=port, notifications=entries)
        config = write_config(tmp_path / "node.toml", document)
        ct, cr = ct_series(tmp_path / "ct", 3), radiograph(tmp_path / "cr")
        (ct_study, ct_series_uid), (cr_study, _) = uids(ct[0]), uids(cr)
        with run_node(config, port=port) as node:
            pacs.store("node", pacs.upload([*ct, cr]))
            wait_until(
                lambda: len(hook.accepted) == 2 and len(fhir.of_type("DiagnosticReport")) == 2,
                TIMEOUT_S,
                lambda: f"two webhooks and two FHIR reports; node log:\n{node.log_text()}",
            )
            report = status(config)
            history = audit_history(config, ct_study)
            log = node.log_text()
    assert not_yet_in_archive == []  # every announced object was in Orthanc already
    assert hook.refused == [] and not hook.repeats  # signed; each exactly once
    by_study = {a.document["study"]["study_instance_uid"]: a.document for a in hook.accepted}
    assert set(by_study) == {ct_study, cr_study}
    ct_document = by_study[ct_study]
    assert ct_document["job"]["model"] == "demo-ct-bone" and ct_document["job"]["model_version"]
    assert ct_document["series"][0]["series_instance_uid"] == ct_series_uid
    assert {r["delivered_to"][0]["ae_title"] for r in ct_document["results"]} == {pacs.aet}
    assert len(ct_document["results"]) >= 2  # SR and SEG
    assert "patient_id" not in ct_document["study"]
    assert fhir.problems == []  # every resource valid (fhir.resources R4B)
    assert len(fhir.of_type("Observation")) >= 2
    assert report["notifications"]["done"] == 4 and report["notifications"]["failed"] == 0
    sent = [line for line in history if line["event"] == "notification"]
    assert sorted(line["target"] for line in sent) == ["emr", "ris"]
    assert all(line["outcome"] == "stored" and line["http_status"] in (200, 201) for line in sent)
    assert "notification sent" in log and " ERROR " not in log
