"""Deliveries in the database: queue results, claim due batches, record each outcome.

A delivery is one result object for one peer, unique per (SOP Instance UID, peer):
a re-processed study re-queues the existing row (same deterministic UID, so the
archive replaces the object) rather than adding one. Claims, leases and backoff follow
the rules jobs follow (`dicom_node.db.leases`): a guarded update of due rows picked with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, owner id and lease on each row, every later
change guarded by the owner.

After a failed attempt (`next_try`): a transient failure is queued again after
``backoff_initial_seconds * 2**(attempts-1)``, capped at ``backoff_max_seconds``, until
``max_attempts``; a permanent one is queued once more and fails the delivery if it fails
permanently again (the row counts them in ``permanent_failures``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DeliverySection
from dicom_node.db import leases
from dicom_node.db.schema import Delivery, Notification, WorkState, utcnow
from dicom_node.net.store_outcome import Outcome, StoreResult
from dicom_node.work.outbox import OutboxFile

logger = logging.getLogger(__name__)

# The tables of sends to peers: deliveries and notifications share their queue's rules.
SendTable = type[Delivery] | type[Notification]


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process is sending until its lease expires."""

    id: int
    peer_name: str
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    attempts: int
    permanent_failures: int
    worker_id: str


# A permanent failure is retried this many times (in case the archive had a passing fault).
PERMANENT_RETRIES = 1


@dataclass(frozen=True)
class NextTry:
    """What follows a failed attempt: the state, when to try again (None: never), and the
    delivery's permanent failures counted so far."""

    state: WorkState
    retry_at: datetime | None
    permanent_failures: int


def backoff_seconds(attempts: int, settings: DeliverySection) -> float:
    """Delay before the next try after ``attempts`` tries: doubling, capped."""
    return leases.backoff_seconds(
        attempts, settings.backoff_initial_seconds, settings.backoff_max_seconds
    )


def next_try(
    result: StoreResult,
    attempts: int,
    permanent_failures: int,
    settings: DeliverySection,
    now: datetime,
) -> NextTry:
    """After a failed attempt (see the module docstring): queue again, or fail."""
    permanent = permanent_failures + (result.outcome is Outcome.PERMANENT)
    if attempts >= settings.max_attempts or permanent > PERMANENT_RETRIES:
        return NextTry(WorkState.FAILED, None, permanent)
    # After the backoff, or the peer's Retry-After when that is later.
    delay = max(backoff_seconds(attempts, settings), result.retry_after_seconds or 0.0)
    return NextTry(WorkState.QUEUED, now + timedelta(seconds=delay), permanent)


def awaiting_commitment(session: Session, transaction_uid: str) -> list[Delivery]:
    """The deliveries sent under ``transaction_uid`` that still await its commitment report.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return list(
        session.scalars(
            select(Delivery).where(
                Delivery.commitment_transaction_uid == transaction_uid,
                Delivery.state == WorkState.WAITING_COMMITMENT,
            )
        )
    )


def fail_waiting(
    row: Delivery, result: StoreResult, settings: DeliverySection, now: datetime
) -> WorkState:
    """Record on a loaded row awaiting commitment that it was not committed; its new state.

    Used when the archive reports it failed to commit the object, and when the request
    or the report never came: the object is sent again, or failed (`next_try`).
    """
    after = next_try(result, row.attempts, row.permanent_failures, settings, now)
    row.state, row.error = after.state, result.error
    row.permanent_failures = after.permanent_failures
    if result.status is not None:
        row.last_status = result.status
    row.next_attempt_at = after.retry_at or now
    row.commitment_transaction_uid = None
    return after.state


def queue_deliveries(
    session: Session, job_id: int, files: Sequence[OutboxFile], peers: Sequence[str]
) -> int:
    """Add (or re-queue) one delivery per (object, peer) in the caller's transaction.

    Returns the number of rows written.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if not files or not peers:
        return 0
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "peer_name": peer,
            "sop_instance_uid": file.sop_instance_uid,
            "sop_class_uid": file.sop_class_uid,
            "path": str(file.path),
            "state": WorkState.QUEUED,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for file in files
        for peer in peers
    ]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Delivery).values(rows)
    excluded = statement.excluded
    reset = {
        "job_id": excluded.job_id,
        "sop_class_uid": excluded.sop_class_uid,
        "path": excluded.path,
        "state": excluded.state,
        "attempts": 0,
        "next_attempt_at": excluded.next_attempt_at,
        "updated_at": excluded.updated_at,
        "last_status": None,
        "error": None,
        "permanent_failures": 0,
        "commitment_transaction_uid": None,
        "worker_id": None,
        "lease_expires_at": None,
    }
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["sop_instance_uid", "peer_name"], set_=reset
        )
    )
    return len(rows)


def due_peers(sessions: sessionmaker[Session]) -> list[str]:
    """Peers with at least one queued delivery due now.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    with sessions() as session:
        return list(
            session.scalars(
                select(Delivery.peer_name)
                .where(Delivery.state == WorkState.QUEUED, Delivery.next_attempt_at <= utcnow())
                .distinct()
            )
        )


def claim_batch(
    sessions: sessionmaker[Session],
    peer_name: str,
    worker_id: str,
    limit: int,
    lease_seconds: float,
) -> list[ClaimedDelivery]:
    """Claim up to ``limit`` due deliveries for one peer, oldest first.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; nothing is claimed then.
    """
    rows = leases.claim_due(
        sessions,
        Delivery,
        worker_id,
        lease_seconds=lease_seconds,
        limit=limit,
        where=[Delivery.peer_name == peer_name],
        stamp="updated_at",
        returning=[
            Delivery.peer_name,
            Delivery.path,
            Delivery.sop_instance_uid,
            Delivery.sop_class_uid,
            Delivery.attempts,
            Delivery.permanent_failures,
        ],
    )
    return [ClaimedDelivery(**row._asdict(), worker_id=worker_id) for row in rows]


def record_outcome(
    session: Session,
    delivery: ClaimedDelivery,
    state: WorkState,
    *,
    status: int | None,
    error: str | None,
    retry_at: datetime | None = None,
    commitment_uid: str | None = None,
    permanent_failures: int | None = None,
) -> bool:
    """Record one send in the caller's transaction; False when the row is not ours anymore
    (re-queued by a newer job, or reclaimed after our lease expired).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return record_send(
        session,
        Delivery,
        delivery.worker_id,
        delivery.id,
        state,
        status=status,
        error=error,
        retry_at=retry_at,
        permanent_failures=permanent_failures,
        also={"commitment_transaction_uid": commitment_uid},
    )


def renew_leases(session: Session, worker_id: str, lease_seconds: float) -> int:
    """Extend the lease of every delivery ``worker_id`` still sends, in the caller's
    transaction; returns how many.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return leases.renew(session, Delivery, lease_seconds, leases.owned_by(Delivery, worker_id))


def reclaim_abandoned_deliveries(sessions: sessionmaker[Session]) -> int:
    """Re-queue running deliveries whose sender died (lease expired, or gone from this host).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return reclaim_abandoned_sends(sessions, Delivery, logger)


def requeue_deliveries(
    sessions: sessionmaker[Session],
    *,
    job_id: int | None = None,
    failed: bool = False,
) -> list[int]:
    """Queue failed deliveries again by hand (``dicom-node retry``), with fresh attempts.

    ``job_id`` limits it to that job's deliveries; ``failed`` takes every failed one.
    Returns the ids requeued.

    Raises
    ------
    ValueError
        When neither is given.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return requeue_failed_sends(sessions, Delivery, job_id=job_id, failed=failed)


def requeue_failed_sends(
    sessions: sessionmaker[Session],
    table: SendTable,
    *,
    job_id: int | None,
    failed: bool,
) -> list[int]:
    """Requeue a job's (or every) failed send of ``table``, deliveries and notifications
    alike: the same rows, the answer of the last try forgotten; the ids requeued.

    Raises
    ------
    ValueError
        When neither ``job_id`` nor ``failed`` is given.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if job_id is None and not failed:
        raise ValueError("give job_id or failed=True")
    condition = table.state == WorkState.FAILED
    if job_id is not None:
        condition = condition & (table.job_id == job_id)
    with sessions.begin() as session:
        values = {"last_status": None, "permanent_failures": 0, "updated_at": utcnow()}
        return leases.requeue(session, table, condition, values)


def record_send(
    session: Session,
    table: SendTable,
    worker_id: str,
    row_id: int,
    state: WorkState,
    *,
    status: int | None,
    error: str | None,
    retry_at: datetime | None,
    permanent_failures: int | None,
    also: Mapping[str, object] = MappingProxyType({}),
    stamp_done: str | None = None,
) -> bool:
    """Record one try of a send of ``table`` in the caller's transaction, deliveries and
    notifications alike; False when the row is not ``worker_id``'s any more.

    Parameters
    ----------
    also
        Further columns to set (deliveries: the commitment transaction).
    stamp_done
        A timestamp column set to the time of the record when the send is done
        (notifications: sent_at).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    now = utcnow()
    values: dict[str, object] = {
        "state": state,
        "last_status": status,
        "error": error,
        "worker_id": None,
        "lease_expires_at": None,
        "updated_at": now,
        **also,
    }
    if stamp_done is not None and state is WorkState.DONE:
        values[stamp_done] = now
    if retry_at is not None:
        values["next_attempt_at"] = retry_at
    if permanent_failures is not None:
        values["permanent_failures"] = permanent_failures
    owned = leases.owned_by(table, worker_id, row_id)
    result = session.execute(update(table).where(*owned).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def reclaim_abandoned_sends(
    sessions: sessionmaker[Session], table: SendTable, log: logging.Logger
) -> int:
    """Re-queue running sends of ``table`` whose sender died, each dead sender's logged on
    ``log`` (the caller's module logger); how many.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    reclaimed = leases.reclaim_abandoned(sessions, table)
    for owner, ids in reclaimed.items():
        log.warning(
            f"{table.__tablename__} requeued", extra={"count": len(ids), "dead_sender": owner}
        )
    return sum(len(ids) for ids in reclaimed.values())
