"""Delivery against a real Storage SCP: batches, transient and permanent failures, recovery."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cli import main
from dicom_node.config import DeliverySection
from dicom_node.db.schema import Delivery, Job, WorkState, utcnow
from dicom_node.net.scu import LocalAE
from dicom_node.work.commitment import CommitmentReportHandler
from dicom_node.work.delivery import DeliveryScanner
from dicom_node.work.delivery_queue import (
    claim_batch,
    queue_deliveries,
    record_outcome,
    renew_leases,
)
from dicom_node.work.outbox import OutboxFile
from tests.conftest import get_free_port
from tests.orchestration.archive import Archive, run_archive
from tests.orchestration.conftest import add_study, make_config
from tests.orchestration.node import dump_toml
from tests.orchestration.studies import ct_series

pytestmark = pytest.mark.integration


@pytest.fixture
def archive() -> Iterator[Archive]:
    with run_archive() as running:
        yield running


def scanner_for(
    tmp_path: Path, sessions: sessionmaker[Session], port: int, **delivery: float
) -> DeliveryScanner:
    config = make_config(
        tmp_path,
        peers=[{"name": "pacs", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": port}],
        routes=[],
        delivery={
            "backoff_initial_seconds": 0,
            "max_attempts": 3,
            "timeout_seconds": 5,
            **delivery,
        },
    )
    return DeliveryScanner(config, sessions, LocalAE("AINODE", 5.0))


def queue_results(sessions: sessionmaker[Session], tmp_path: Path, count: int) -> list[str]:
    """A done job with ``count`` result files queued for ``pacs``; their SOP UIDs."""
    files = ct_series(tmp_path / "results", count)
    with sessions.begin() as session:
        study = add_study(session, "1.2.3", [{"modality": "CT"}])
        job = Job(study_id=study.id, route_name="r", model_name="m", state=WorkState.DONE)
        session.add(job)
        session.flush()
        objects = []
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            objects.append(OutboxFile(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
        queue_deliveries(session, job.id, objects, ["pacs"])
    return [o.sop_instance_uid for o in objects]


def deliveries(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def make_due(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.execute(update(Delivery).values(next_attempt_at=utcnow()))


def test_batch_goes_over_one_association_and_is_done(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    uids = queue_results(sessions, tmp_path, 5)
    scanner = scanner_for(tmp_path, sessions, archive.port)
    assert scanner.scan() == 5
    assert archive.associations == 1
    assert archive.receipts == {uid: 1 for uid in uids}
    assert {(d.state, d.attempts, d.last_status) for d in deliveries(sessions)} == {
        (WorkState.DONE, 1, 0)
    }
    assert scanner.scan() == 0 and archive.associations == 1  # nothing sent twice


def test_batches_are_split_at_batch_size(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 5)
    assert scanner_for(tmp_path, sessions, archive.port, batch_size=2).scan() == 5
    assert archive.associations == 3


def test_permanent_failure_is_retried_once_then_failed_with_meaning(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    (uid,) = queue_results(sessions, tmp_path, 1)
    archive.status = 0xA900
    scanner = scanner_for(tmp_path, sessions, archive.port)
    scanner.scan()
    (row,) = deliveries(sessions)
    assert (row.state, row.attempts, row.last_status) == (WorkState.QUEUED, 1, 0xA900)
    make_due(sessions)
    scanner.scan()
    (row,) = deliveries(sessions)
    assert (row.state, row.attempts) == (WorkState.FAILED, 2)
    assert row.error == "permanent: 0xA900 Data Set Does Not Match SOP Class"
    make_due(sessions)
    scanner.scan()
    assert archive.receipts[uid] == 2  # never retried in a loop


def test_out_of_resources_is_transient_until_max_attempts(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 1)
    archive.status = 0xA700
    scanner = scanner_for(tmp_path, sessions, archive.port, max_attempts=3)
    for attempt in (1, 2):
        scanner.scan()
        (row,) = deliveries(sessions)
        assert (row.state, row.attempts, row.last_status) == (WorkState.QUEUED, attempt, 0xA700)
        make_due(sessions)
    scanner.scan()
    (row,) = deliveries(sessions)
    assert (row.state, row.error) == (
        WorkState.FAILED,
        "transient: 0xA700 Refused: Out of Resources",
    )


def test_archive_that_fails_to_commit_twice_fails_the_delivery(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A commitment failure is permanent: one retry, then failed, though each send was
    stored (the stored send cleared the error text the rule used to read: a loop)."""
    (uid,) = queue_results(sessions, tmp_path, 1)
    handler = CommitmentReportHandler(sessions, DeliverySection(backoff_initial_seconds=0))
    seen = []
    for transaction_uid in ("1.2.9.1", "1.2.9.2"):
        make_due(sessions)
        (item,) = claim_batch(sessions, "pacs", "me", 10, lease_seconds=60)
        with sessions.begin() as session:
            assert record_outcome(
                session,
                item,
                WorkState.WAITING_COMMITMENT,
                status=0,
                error=None,
                retry_at=utcnow() + timedelta(hours=1),
                commitment_uid=transaction_uid,
            )
        assert handler.apply(transaction_uid, {}, {uid: 0x0110}) == (0, 1)
        (row,) = deliveries(sessions)
        seen.append((row.state, row.attempts, row.last_status, row.permanent_failures))
    assert seen == [(WorkState.QUEUED, 1, 0x0110, 1), (WorkState.FAILED, 2, 0x0110, 2)]
    assert row.error == "permanent: 0x0110 archive did not commit (reason 0x0110)"


def test_unreachable_peer_backs_off_exponentially(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 2)
    scanner = scanner_for(
        tmp_path,
        sessions,
        get_free_port(),
        backoff_initial_seconds=10,
        backoff_max_seconds=15,
        max_attempts=10,
    )
    delays = []
    for _ in range(3):
        before = utcnow()
        scanner.scan()
        rows = deliveries(sessions)
        assert all(
            r.state == WorkState.QUEUED and r.error and r.error.startswith("transient: ")
            for r in rows
        )
        delays.append(round((rows[0].next_attempt_at - before).total_seconds()))
        make_due(sessions)
    assert delays == [10, 15, 15]  # 10, 20 capped at 15, 40 capped at 15


def test_missing_result_file_fails_permanently(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 1)
    shutil.rmtree(tmp_path / "results")
    scanner = scanner_for(tmp_path, sessions, archive.port)
    scanner.scan()
    make_due(sessions)
    scanner.scan()
    (row,) = deliveries(sessions)
    assert row.state == WorkState.FAILED and "not a DICOM file" in (row.error or "")


def test_retry_command_requeues_failed_deliveries(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path, database_url: str
) -> None:
    (uid,) = queue_results(sessions, tmp_path, 1)
    archive.status = 0xC000
    scanner = scanner_for(tmp_path, sessions, archive.port)
    for _ in range(2):
        scanner.scan()
        make_due(sessions)
    assert deliveries(sessions)[0].state == WorkState.FAILED
    config = tmp_path / "node.toml"
    config.write_text(
        dump_toml({"node": {"database_url": database_url, "storage_dir": str(tmp_path)}})
    )
    assert main(["retry", "-c", str(config), "--failed"]) == 0
    (row,) = deliveries(sessions)
    assert (row.state, row.attempts, row.error, row.permanent_failures) == (
        WorkState.QUEUED,
        0,
        None,
        0,
    )
    archive.status = 0x0000
    assert scanner.scan() == 1
    assert archive.receipts[uid] == 3


def test_deliveries_of_a_dead_sender_are_requeued(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 2)
    gone = f"{socket.gethostname()}:999999999:1:delivery:1"  # a pid that does not exist
    with sessions.begin() as session:  # claimed by that process, lease still valid
        session.execute(
            update(Delivery).values(
                state=WorkState.RUNNING,
                worker_id=gone,
                lease_expires_at=utcnow() + timedelta(hours=1),
            )
        )
    assert scanner_for(tmp_path, sessions, archive.port).scan() == 2
    assert all(d.state == WorkState.DONE for d in deliveries(sessions))


def test_each_recorded_outcome_renews_the_lease_of_the_rest_of_the_batch(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 2)
    first, second = claim_batch(sessions, "pacs", "me", 10, lease_seconds=1)
    with sessions.begin() as session:
        assert renew_leases(session, "me", 600) == 2
        record_outcome(session, first, WorkState.DONE, status=0, error=None)
    (_, other) = deliveries(sessions)
    assert other.id == second.id and other.state == WorkState.RUNNING
    assert other.lease_expires_at is not None
    assert other.lease_expires_at > utcnow() + timedelta(seconds=500)


def test_reprocessed_result_requeues_its_delivery_instead_of_adding_one(
    sessions: sessionmaker[Session], archive: Archive, tmp_path: Path
) -> None:
    (uid,) = queue_results(sessions, tmp_path, 1)
    scanner = scanner_for(tmp_path, sessions, archive.port)
    scanner.scan()
    (first,) = deliveries(sessions)
    assert first.state == WorkState.DONE
    with sessions.begin() as session:  # the study re-opened: a new job made the same UID
        job = Job(study_id=1, generation=1, route_name="r", model_name="m", state=WorkState.DONE)
        session.add(job)
        session.flush()
        queue_deliveries(
            session, job.id, [OutboxFile(Path(first.path), uid, first.sop_class_uid)], ["pacs"]
        )
    (again,) = deliveries(sessions)
    assert (again.id, again.job_id, again.state, again.attempts) == (
        first.id,
        job.id,
        WorkState.QUEUED,
        0,
    )
    scanner.scan()
    assert archive.receipts[uid] == 2  # sent again: the archive replaces it (same UID)
