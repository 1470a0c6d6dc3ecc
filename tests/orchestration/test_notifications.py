"""Result notifications against real HTTP receivers on loopback: when they go, what they
carry, retries, order and exactly-once, the FHIR stand-in, TLS, status, retry, retention."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import read_audit
from dicom_node.cli import main
from dicom_node.config import NodeConfig
from dicom_node.db.schema import (
    Delivery,
    Instance,
    Job,
    Notification,
    Study,
    StudyState,
    WorkState,
    utcnow,
)
from dicom_node.metrics import QueueCollector
from dicom_node.work.notification import NotificationScanner
from dicom_node.work.notification_queue import claim_notifications, queue_notifications
from dicom_node.work.queue_report import failures_section, notifications_section
from dicom_node.work.row_retention import forget_finished_studies
from tests.node.test_tls import make_pki
from tests.orchestration.conftest import add_study, make_config
from tests.orchestration.node import dump_toml
from tests.orchestration.receivers import (
    FhirServer,
    Receiver,
    run_fhir_server,
    run_receiver,
    start,
    tls_context,
)

pytestmark = pytest.mark.integration

SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SECRET = "s3cret-for-the-test"
MAX_SCANS = 20


def webhook(url: str, **keys: Any) -> dict[str, Any]:
    return {
        "kind": "webhook",
        "name": "hook",
        "url": url,
        "allow_plain_http": True,
        "read_timeout_seconds": 5,
        **keys,
    }


def config_with(tmp_path: Path, *entries: dict[str, Any], **delivery: Any) -> NodeConfig:
    return make_config(
        tmp_path,
        notifications=list(entries),
        delivery={"backoff_initial_seconds": 0, "max_attempts": 4, **delivery},
    )


def findings(series_uid: str) -> dict[str, Any]:
    label = {"label": "bone", "threshold": 0.5, "voxels": 120, "volume_ml": 1.5, "positive": True}
    return {
        "series": [
            {
                "series_uid": series_uid,
                "model_version": "1.0.0",
                "task": "segmentation",
                "labels": [label],
                "skipped": [],
                "inputs": {"SliceThickness": 1.0},
            }
        ],
        "files": [],
    }


def finished_job(
    session: Session,
    config: NodeConfig,
    study_uid: str,
    *,
    model: str = "ct-model",
    route: str = "ct",
    delivered: WorkState = WorkState.DONE,
    mode: str = "live",
) -> Job:
    """A done job of ``study_uid`` (added when new) with an SR and a SEG delivered (or in
    ``delivered``) to ``pacs``, and its notifications queued, as the worker leaves them."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        study = add_study(session, study_uid, [{"modality": "CT"}])
        study.patient_id, study.patient_name = "PAT-4711", "Doe^Jane"
        study.accession_number, study.study_date = "ACC-1", "20260104"
    job = Job(
        study_id=study.id,
        route_name=route,
        model_name=model,
        state=WorkState.DONE,
        finished_at=utcnow(),
        mode=mode,
        findings=findings(f"{study_uid}.1"),
    )
    session.add(job)
    session.flush()
    for kind, sop_class in (("1", SR), ("2", SEG)):
        session.add(
            Delivery(
                job_id=job.id,
                peer_name="pacs",
                sop_instance_uid=f"{study_uid}.9.{job.id}.{kind}",
                sop_class_uid=sop_class,
                path=f"/outbox/{job.id}/{kind}.dcm",
                state=delivered,
            )
        )
    queue_notifications(session, job.id, config.notifications)
    return job


def notifications(sessions: sessionmaker[Session]) -> list[Notification]:
    with sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def make_due(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.execute(update(Notification).values(next_attempt_at=utcnow()))


def scan_until_settled(scanner: NotificationScanner, sessions: sessionmaker[Session]) -> int:
    """Scan (every row due at once) until nothing is queued; the scans it took."""
    for scans in range(1, MAX_SCANS + 1):
        make_due(sessions)
        scanner.scan()
        if all(n.state is not WorkState.QUEUED for n in notifications(sessions)):
            return scans
    raise AssertionError(f"notifications still queued after {MAX_SCANS} scans")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with run_receiver(secret=SECRET) as running:
        yield running


def test_webhook_waits_for_the_archive_then_arrives_once_signed(
    sessions: sessionmaker[Session],
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    config = config_with(tmp_path, webhook(receiver.url, secret_env="HOOK_SECRET"))
    with sessions.begin() as session:
        job = finished_job(session, config, "1.2.3", delivered=WorkState.QUEUED)
        job_id = job.id
    scanner = NotificationScanner(config, sessions)
    assert scanner.scan() == 0  # the archive does not hold the results yet
    with sessions() as session:
        assert notifications_section(session, config)["waiting_for_results"] == 1
    for state in (WorkState.WAITING_COMMITMENT, WorkState.DONE):
        with sessions.begin() as session:
            session.execute(update(Delivery).values(state=state, commitment_transaction_uid="9.9"))
        assert scanner.scan() == (1 if state is WorkState.DONE else 0)
    assert scanner.scan() == 0 and receiver.requests == 1  # sent once
    assert receiver.refused == []  # the receiver checked the HMAC signature
    (accepted,) = receiver.accepted
    (row,) = notifications(sessions)
    assert (row.state, row.attempts, row.last_status) == (WorkState.DONE, 1, 200)
    assert accepted.key == row.idempotency_key
    document = accepted.document
    assert document["event"] == "results-available" and document["node"] == "AINODE"
    assert document["study"] == {
        "study_instance_uid": "1.2.3",
        "accession_number": "ACC-1",
        "study_date": "20260104",
        "study_description": "CHEST CT",
    }
    assert document["job"]["id"] == job_id and document["job"]["routes"] == ["ct"]
    assert (document["job"]["model"], document["job"]["model_version"]) == ("ct-model", "1.0.0")
    (series,) = document["series"]
    assert series["series_instance_uid"] == "1.2.3.1" and series["task"] == "segmentation"
    assert series["findings"][0]["volume_ml"] == 1.5 and "inputs" not in series
    assert [(r["sop_class_uid"], r["delivered_to"]) for r in document["results"]] == [
        (sop, [{"peer": "pacs", "ae_title": "ORTHANC", "storage_commitment": True}])
        for sop in (SR, SEG)
    ]
    gauges = {m.name: m for m in QueueCollector(sessions).collect()}
    (sample,) = gauges["dicom_node_notifications"].samples
    assert (sample.labels, sample.value) == ({"state": "done", "target": "hook"}, 1)
    with sessions() as session:
        assert notifications_section(session, config) == {
            "queued": 0,
            "running": 0,
            "done": 1,
            "failed": 0,
            "skipped": 0,
            "waiting_for_results": 0,
        }


def test_patient_identifiers_only_where_the_entry_allows_them(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with run_receiver() as plain, run_receiver() as allowed:
        config = config_with(
            tmp_path,
            webhook(plain.url),
            webhook(allowed.url, name="ris", include_patient_ids=True),
        )
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
        assert NotificationScanner(config, sessions).scan() == 2
    (without,), (with_ids,) = plain.accepted, allowed.accepted
    assert "PAT-4711" not in json.dumps(without.document)
    assert "Doe^Jane" not in json.dumps(without.document)
    assert with_ids.document["study"]["patient_id"] == "PAT-4711"
    assert with_ids.document["study"]["patient_name"] == "Doe^Jane"


def test_receiver_down_and_back_every_notification_once_in_order_per_study(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with run_receiver(running=False) as receiver:
        config = config_with(tmp_path, webhook(receiver.url), max_attempts=30)
        with sessions.begin() as session:
            jobs = [
                finished_job(session, config, study, model=model)
                for model in ("ct-model", "cr-model")
                for study in ("1.2.3", "1.2.4", "1.2.5")
            ]
            expected = {study: [] for study in ("1.2.3", "1.2.4", "1.2.5")}
            for job in jobs:
                expected[session.get_one(Study, job.study_id).study_instance_uid].append(job.id)
        scanner = NotificationScanner(config, sessions)
        for _ in range(3):  # down: each first notification of a study is tried, the rest wait
            make_due(sessions)
            assert scanner.scan() == 0
        rows = notifications(sessions)
        assert [r.attempts for r in rows] == [3, 3, 3, 0, 0, 0]
        assert all(r.error and r.error.startswith("transient: no connection") for r in rows[:3])
        receiver.answers = [503]  # back, but busy for one request
        start(receiver)
        scan_until_settled(scanner, sessions)
    assert {n.state for n in notifications(sessions)} == {WorkState.DONE}
    assert len(receiver.accepted) == 6 and not receiver.repeats  # each exactly once
    arrived: dict[str, list[int]] = {}
    for accepted in receiver.accepted:
        document = accepted.document
        arrived.setdefault(document["study"]["study_instance_uid"], []).append(
            document["job"]["id"]
        )
    assert arrived == expected  # in order per study


def test_lost_answer_is_retried_with_the_same_key_and_kept_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with run_receiver(delay_seconds=1.5) as receiver:
        config = config_with(tmp_path, webhook(receiver.url, read_timeout_seconds=0.3))
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
        scanner = NotificationScanner(config, sessions)
        assert scanner.scan() == 0  # accepted, but the answer came too late
        (row,) = notifications(sessions)
        assert row.state is WorkState.QUEUED and row.error == "transient: timed out: ReadTimeout"
        receiver.delay_seconds = 0
        scan_until_settled(scanner, sessions)
    (row,) = notifications(sessions)
    assert row.state is WorkState.DONE and row.attempts == 2
    assert receiver.keys() == [row.idempotency_key]
    assert receiver.repeats == {row.idempotency_key: 1}  # the receiver dropped the repeat


def test_permanent_answer_is_retried_once_then_failed_and_retry_requeues_it(
    sessions: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_receiver(answers=[429, 302, 400]) as receiver:  # a redirect is not followed
        config = config_with(tmp_path, webhook(receiver.url))
        with sessions.begin() as session:
            first = finished_job(session, config, "1.2.3").id
            second = finished_job(session, config, "1.2.3", model="cr-model").id
        scanner = NotificationScanner(config, sessions)
        scanner.scan()
        row = notifications(sessions)[0]
        assert (row.state, row.last_status, row.permanent_failures) == (WorkState.QUEUED, 429, 0)
        scan_until_settled(scanner, sessions)
        failed, later = notifications(sessions)
        assert (failed.state, failed.attempts, failed.last_status) == (WorkState.FAILED, 3, 400)
        assert failed.error and failed.error.startswith("permanent: HTTP 400")
        assert later.state is WorkState.DONE  # a failed notification holds up no other
        with sessions() as session:
            assert f"notification {failed.id} (job {first} -> hook)" in failures_section(
                session, config
            )
        database = sessions.kw["bind"].url.render_as_string(hide_password=False)
        document = {
            "node": {"storage_dir": str(tmp_path / "spool"), "database_url": database},
            "audit": {"dir": str(tmp_path / "audit")},
        }
        path = tmp_path / "node.toml"
        path.write_text(dump_toml(document))
        assert main(["retry", "-c", str(path), "--failed"]) == 0
        assert capsys.readouterr().out.strip().endswith("0 delivery(ies) and 1 notification(s)")
        (requeued,) = [e for e in read_audit(tmp_path / "audit") if e["event"] == "requeued"]
        assert (requeued["notification_id"], requeued["job_id"]) == (failed.id, first)
        assert requeued["target"] == "hook"
        scan_until_settled(scanner, sessions)
    retried, _ = notifications(sessions)
    assert retried.state is WorkState.DONE and retried.idempotency_key == failed.idempotency_key
    assert [a.document["job"]["id"] for a in receiver.accepted] == [second, first]


def test_results_the_archive_refused_are_not_announced(
    sessions: sessionmaker[Session], receiver: Receiver, tmp_path: Path
) -> None:
    config = config_with(tmp_path, webhook(receiver.url))
    with sessions.begin() as session:
        finished_job(session, config, "1.2.3", delivered=WorkState.FAILED)
    assert NotificationScanner(config, sessions).scan() == 0
    (row,) = notifications(sessions)
    assert row.state is WorkState.FAILED and receiver.requests == 0
    assert row.error and "the archive does not hold the results (deliveries" in row.error


def test_filters_shadow_jobs_and_a_job_run_again(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = config_with(
        tmp_path,
        webhook("http://127.0.0.1:9/a", name="ct-only", routes=["ct"]),
        webhook("http://127.0.0.1:9/b", name="cr-model-only", models=["cr-model"]),
    )
    with sessions.begin() as session:
        finished_job(session, config, "1.2.3", model="ct-model", route="ct")
        finished_job(session, config, "1.2.3", model="cr-model", route="other+ct")
        finished_job(session, config, "1.2.4", model="cr-model", route="other")
        shadow = finished_job(session, config, "1.2.5", mode="shadow")
        assert queue_notifications(session, shadow.id, config.notifications) == 0
    queued = {(n.job_id, n.target) for n in notifications(sessions)}
    assert queued == {(1, "ct-only"), (2, "ct-only"), (2, "cr-model-only"), (3, "cr-model-only")}
    before = {n.id: n.idempotency_key for n in notifications(sessions)}
    with sessions.begin() as session:  # the job ran again: a new announcement
        assert queue_notifications(session, 1, config.notifications) == 1
    after = {n.id: n.idempotency_key for n in notifications(sessions)}
    assert after.keys() == before.keys()
    assert [i for i in after if after[i] != before[i]] == [
        n.id for n in notifications(sessions) if n.job_id == 1
    ]


def fhir_entry(server: FhirServer, **keys: Any) -> dict[str, Any]:
    return {
        "kind": "fhir",
        "name": "emr",
        "url": server.url,
        "allow_plain_http": True,
        "include_patient_ids": True,
        **keys,
    }


@pytest.mark.parametrize("post", ["transaction", "individual"])
def test_fhir_report_and_observations_are_valid_and_created_once(
    sessions: sessionmaker[Session], tmp_path: Path, post: str
) -> None:
    with run_fhir_server() as server:
        config = config_with(tmp_path, fhir_entry(server, post=post))
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
        scanner = NotificationScanner(config, sessions)
        assert scanner.scan() == 1
        with sessions.begin() as session:  # sent again by hand: the same announcement
            session.execute(update(Notification).values(state=WorkState.QUEUED))
        assert scanner.scan() == 1
    assert server.problems == []  # every resource valid for fhir.resources (R4B)
    (report,) = server.of_type("DiagnosticReport")
    (observation,) = server.of_type("Observation")  # created once, not twice
    study = {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}
    assert report["imagingStudy"] == [{"type": "ImagingStudy", "identifier": study}]
    assert report["result"] == [{"reference": f"Observation/{observation['id']}"}]
    assert report["identifier"][1]["value"] == "ACC-1"
    assert report["subject"]["identifier"]["value"] == "PAT-4711"
    assert report["status"] == "final" and report["conclusion"] == "ct-model 1.0.0: bone"
    assert report["effectiveDateTime"] == "2026-01-04"
    assert observation["code"]["text"] == "bone"
    assert observation["interpretation"][0]["coding"][0]["code"] == "POS"
    volume = next(c for c in observation["component"] if c["code"]["text"] == "volume")
    assert volume["valueQuantity"] == {
        "value": 1.5,
        "unit": "mL",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert observation["derivedFrom"] == [{"type": "ImagingStudy", "identifier": study}]
    expected_posts = (
        ["/fhir"] if post == "transaction" else ["/fhir/Observation", "/fhir/DiagnosticReport"]
    )
    assert server.posts == expected_posts * 2


def test_https_receiver_is_verified_with_the_ca_file(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path / "pki")
    # A host-wide bundle (which plain requests lets override a session's own CA file).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    with run_receiver(running=False) as receiver:
        receiver.tls = tls_context(pki)
        start(receiver)
        untrusted = webhook(receiver.url, name="untrusted")
        trusted = webhook(receiver.url, name="trusted", ca_file=str(pki / "ca.crt"))
        config = config_with(tmp_path, untrusted, trusted)
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
        NotificationScanner(config, sessions).scan()
    by_target = {n.target: n for n in notifications(sessions)}
    assert by_target["trusted"].state is WorkState.DONE
    refused = by_target["untrusted"]
    assert refused.state is WorkState.QUEUED and "CERTIFICATE_VERIFY_FAILED" in (
        refused.error or ""
    )
    assert len(receiver.accepted) == 1


def test_retention_forgets_a_study_with_its_notifications_once_they_are_sent(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with run_receiver() as receiver:
        config = config_with(tmp_path, webhook(receiver.url))
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
            session.execute(update(Study).values(state=StudyState.ROUTED))
            session.execute(delete(Instance))  # retention removed their files
        assert forget_finished_studies(sessions, keep_hours=0) == 0  # not announced yet
        assert NotificationScanner(config, sessions).scan() == 1
    assert forget_finished_studies(sessions, keep_hours=0) == 1
    assert notifications(sessions) == []


def test_a_send_cut_short_by_a_dead_sender_goes_again_with_the_same_key(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with run_receiver() as receiver:
        config = config_with(tmp_path, webhook(receiver.url))
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
        # A sender on another host claimed it and died: its lease runs out.
        (claimed,) = claim_notifications(sessions, "elsewhere:1:notify:1", 10, lease_seconds=0)
        assert claimed.attempts == 1
        assert NotificationScanner(config, sessions).scan() == 1
    (row,) = notifications(sessions)
    assert (row.state, row.attempts) == (WorkState.DONE, 2)  # the dead try counts
    assert receiver.keys() == [row.idempotency_key]


def test_an_entry_removed_from_the_config_fails_its_notifications_with_the_reason(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with run_receiver() as receiver:
        config = config_with(tmp_path, webhook(receiver.url), webhook(receiver.url, name="old"))
        with sessions.begin() as session:
            finished_job(session, config, "1.2.3")
        assert (
            NotificationScanner(config_with(tmp_path, webhook(receiver.url)), sessions).scan() == 1
        )
    by_target = {n.target: n for n in notifications(sessions)}
    assert by_target["hook"].state is WorkState.DONE
    assert by_target["old"].state is WorkState.FAILED
    assert by_target["old"].error == "permanent: no [[notifications]] entry named 'old' any more"
    assert len(receiver.accepted) == 1
