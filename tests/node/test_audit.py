"""The audit trail: lines from the listener, patient identifiers only when asked,
rotation, a study's history linked through its jobs and results, the ``audit`` command."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.audit import (
    AuditEvent,
    audit,
    close_audit_log,
    open_audit_log,
    read_audit,
    study_history,
)
from dicom_node.cli import build_parser
from dicom_node.config import AuditSection
from dicom_node.logs import KeyValueFormatter
from dicom_node.net.scu import AssociationError, LocalAE, echo, send_files
from tests.node.conftest import SENDER_AET, RunningNode, node_settings, wait_for, write_toml

StartNode = Callable[..., RunningNode]
SENDER = LocalAE(ae_title=SENDER_AET, timeout=10)


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditSection]:
    """An audit file for role ``test`` in this test's folder, closed afterwards."""
    settings = AuditSection(dir=tmp_path / "audit", include_patient_ids=False)
    handler = open_audit_log(settings, "test")
    yield settings
    close_audit_log(handler)


def test_patient_ids_only_when_configured(tmp_path: Path) -> None:
    for include in (False, True):
        settings = AuditSection(dir=tmp_path / str(include), include_patient_ids=include)
        handler = open_audit_log(settings, "test")
        audit(AuditEvent.STUDY_COMPLETED, study_uid="1.2.3", patient_id="PID-7", instances=2)
        close_audit_log(handler)
        (line,) = read_audit(settings.dir)
        assert line["event"] == "study-completed" and line["instances"] == 2
        assert ("patient_id" in line) is include


def test_audit_lines_never_reach_the_diagnostic_log(tmp_path: Path) -> None:
    settings = AuditSection(dir=tmp_path, include_patient_ids=True)
    audit_handler = open_audit_log(settings, "test")
    diagnostic = io.StringIO()
    handler = logging.StreamHandler(diagnostic)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        audit(AuditEvent.STUDY_COMPLETED, study_uid="1.2.3", patient_name="DOE^JANE")
        logging.getLogger("dicom_node.test").warning("still logging")
    finally:
        root.removeHandler(handler)
        close_audit_log(audit_handler)
    assert diagnostic.getvalue() == "still logging\n"
    assert "DOE^JANE" in (tmp_path / "test.jsonl").read_text()


def test_files_rotate_and_rotated_lines_are_read(tmp_path: Path) -> None:
    settings = AuditSection(dir=tmp_path, max_file_mb=1, keep_files=3)
    handler = open_audit_log(settings, "test")
    padding = "x" * 1000
    for number in range(1500):  # about 1.6 MB: one rotation
        audit(AuditEvent.STUDY_COMPLETED, study_uid=f"1.2.{number}", note=padding)
    close_audit_log(handler)
    assert (tmp_path / "test.jsonl.1").exists()
    assert all(p.stat().st_size <= 1024 * 1024 + 2000 for p in tmp_path.glob("test.jsonl*"))
    assert len(list(read_audit(tmp_path))) == 1500


def test_history_follows_jobs_and_results_and_skips_other_studies(trail: AuditSection) -> None:
    audit(AuditEvent.STUDY_COMPLETED, study_uid="1.1", instances=3)
    audit(AuditEvent.STUDY_COMPLETED, study_uid="9.9", instances=1)
    audit(AuditEvent.JOB_RUN, study_uid="1.1", job_id=4, outcome="done")
    audit(AuditEvent.JOB_RUN, study_uid="9.9", job_id=5, outcome="done")
    audit(AuditEvent.RESULT_CREATED, study_uid="1.1", job_id=4, result_sop_uid="1.1.7")
    audit(AuditEvent.DELIVERY, result_sop_uid="1.1.7", outcome="stored")
    audit(AuditEvent.COMMITMENT, result_sop_uid="1.1.7", committed=True)
    audit(AuditEvent.DELIVERY, result_sop_uid="9.9.7", outcome="stored")
    audit(AuditEvent.REQUEUED, job_id=None, job_ids=[4, 6], deliveries=0)
    history = study_history(trail.dir, "1.1")
    assert [line["event"] for line in history] == [
        "study-completed",
        "job-run",
        "result-created",
        "delivery",
        "commitment",
        "requeued",
    ]
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert study_history(trail.dir, "1.1", since=later) == []


def test_a_line_cut_by_a_crash_is_skipped(trail: AuditSection) -> None:
    audit(AuditEvent.STUDY_COMPLETED, study_uid="1.1")
    with (trail.dir / "test.jsonl").open("a") as handle:
        handle.write('{"time": "2026-')
    assert [line["study_uid"] for line in read_audit(trail.dir)] == ["1.1"]


def test_listener_audits_associations_and_counts_per_study(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(audit={"dir": str(tmp_path / "trail"), "include_patient_ids": True})
    source = Path(get_testdata_file("CT_small.dcm"))
    assert all(r.ok for r in send_files(SENDER, node.peer, [source]))
    assert all(r.ok for r in send_files(SENDER, node.peer, [source]))  # a duplicate
    with pytest.raises(AssociationError, match="rejected"):
        echo(LocalAE(ae_title="INTRUDER", timeout=5), node.peer)
    study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)

    def lines(event: str) -> list[dict[str, object]]:
        return [line for line in read_audit(tmp_path / "trail") if line["event"] == event]

    assert wait_for(lambda: len(lines("instances-received")) == 2)
    first, second = lines("instances-received")
    assert first["study_uid"] == second["study_uid"] == study_uid
    assert first["outcomes"] == {"new": 1} and second["outcomes"] == {"kept": 1}
    assert first["calling_aet"] == SENDER_AET and first["client"] == "127.0.0.1"
    assert first["patient_id"] == str(pydicom.dcmread(source).PatientID)
    accepted = lines("association-accepted")
    assert [line["calling_aet"] for line in accepted] == [SENDER_AET, SENDER_AET]
    assert all(line["tls_peer"] is None for line in accepted)
    (rejected,) = lines("association-rejected")
    assert rejected["calling_aet"] == "INTRUDER" and "calling AE" in str(rejected["refusal"])
    (started,) = lines("node-started")
    assert started["role"] == "listener" and len(str(started["config_sha256"])) == 64


def audit_command(argv: list[str]) -> int:
    """``dicom-node audit ...`` as ``main`` runs it, without configuring logging."""
    args = build_parser().parse_args(["audit", *argv])
    return int(args.run(args))


def test_audit_command(
    trail: AuditSection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_toml(
        node_settings(tmp_path, audit={"dir": str(trail.dir)}), tmp_path / "node.toml"
    )
    audit(AuditEvent.STUDY_COMPLETED, study_uid="1.1", instances=3, reason="quiet")
    assert audit_command(["-c", str(config), "--study", "1.1"]) == 0
    out = capsys.readouterr().out
    assert "study-completed" in out and "instances=3" in out and "reason=quiet" in out
    assert audit_command(["-c", str(config), "--study", "1.1", "--json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)
    assert line["instances"] == 3
    assert audit_command(["-c", str(config), "--study", "1.1", "--since", "2999-01-01"]) == 1
    assert "no events for study 1.1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        audit_command(["-c", str(config), "--study", "1.1", "--since", "Tuesday"])
    assert "not an ISO 8601 date" in capsys.readouterr().err
