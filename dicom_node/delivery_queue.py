"""Deliveries in the database: queue results, claim due batches, record each outcome.

A delivery is one result object for one peer, unique per (SOP Instance UID, peer):
a re-processed study re-queues the existing row (same deterministic UID, so the
archive replaces the object) rather than adding one. Claims work like job claims
(`dicom_node.jobs`): a guarded update of rows picked with ``FOR UPDATE SKIP LOCKED``
on PostgreSQL, owner id and lease on each row, every later change guarded by the owner.

After a failed attempt (`next_try`): a transient failure is queued again after
``backoff_initial_seconds * 2**(attempts-1)``, capped at ``backoff_max_seconds``, until
``max_attempts``; a permanent one is queued once more and fails the delivery if it fails
permanently again (the row counts them in ``permanent_failures``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DeliverySection
from dicom_node.ownership import owner_is_gone
from dicom_node.schema import Delivery, WorkState, utcnow
from dicom_node.store_outcome import Outcome, StoreResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObject:
    """A result file to deliver."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str


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
    delay = settings.backoff_initial_seconds * 2 ** max(0, attempts - 1)
    return float(min(delay, settings.backoff_max_seconds))


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
    retry_at = now + timedelta(seconds=backoff_seconds(attempts, settings))
    return NextTry(WorkState.QUEUED, retry_at, permanent)


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
    session: Session, job_id: int, objects: Sequence[ResultObject], peers: Sequence[str]
) -> int:
    """Add (or re-queue) one delivery per (object, peer) in the caller's transaction.

    Returns the number of rows written.
    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if not objects or not peers:
        return 0
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "peer_name": peer,
            "sop_instance_uid": obj.sop_instance_uid,
            "sop_class_uid": obj.sop_class_uid,
            "path": obj.path,
            "state": WorkState.QUEUED,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for obj in objects
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
    now = utcnow()
    due = (
        select(Delivery.id)
        .where(
            Delivery.state == WorkState.QUEUED,
            Delivery.peer_name == peer_name,
            Delivery.next_attempt_at <= now,
        )
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        # Materialized: PostgreSQL may otherwise run a LIMIT ... SKIP LOCKED sub-select
        # inside IN (...) more than once and claim more than ``limit`` rows.
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    with sessions.begin() as session:
        rows = session.execute(
            update(Delivery)
            .where(Delivery.id.in_(select(due.c.id)), Delivery.state == WorkState.QUEUED)
            .values(
                state=WorkState.RUNNING,
                worker_id=worker_id,
                attempts=Delivery.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(
                Delivery.id,
                Delivery.peer_name,
                Delivery.path,
                Delivery.sop_instance_uid,
                Delivery.sop_class_uid,
                Delivery.attempts,
                Delivery.permanent_failures,
            )
        ).all()
    claimed = [ClaimedDelivery(*row, worker_id=worker_id) for row in rows]
    return sorted(claimed, key=lambda d: d.id)


def _owned(delivery: ClaimedDelivery) -> list[ColumnElement[bool]]:
    return [
        Delivery.id == delivery.id,
        Delivery.worker_id == delivery.worker_id,
        Delivery.state == WorkState.RUNNING,
    ]


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
    values: dict[str, object] = {
        "state": state,
        "last_status": status,
        "error": error,
        "worker_id": None,
        "lease_expires_at": None,
        "updated_at": utcnow(),
        "commitment_transaction_uid": commitment_uid,
    }
    if retry_at is not None:
        values["next_attempt_at"] = retry_at
    if permanent_failures is not None:
        values["permanent_failures"] = permanent_failures
    result = session.execute(update(Delivery).where(*_owned(delivery)).values(**values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_leases(session: Session, worker_id: str, lease_seconds: float) -> int:
    """Extend the lease of every delivery ``worker_id`` still sends, in the caller's
    transaction; returns how many.
    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    result = session.execute(
        update(Delivery)
        .where(Delivery.worker_id == worker_id, Delivery.state == WorkState.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def reclaim_abandoned_deliveries(sessions: sessionmaker[Session]) -> int:
    """Re-queue running deliveries whose sender died (lease expired, or gone from this host).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    now = utcnow()
    with sessions() as session:
        running = session.execute(
            select(Delivery.worker_id, func.min(Delivery.lease_expires_at))
            .where(Delivery.state == WorkState.RUNNING)
            .group_by(Delivery.worker_id)
        ).all()
    reclaimed = 0
    for owner, earliest_lease in running:
        gone = owner_is_gone(owner)
        if not gone and earliest_lease is not None and earliest_lease > now:
            continue
        conditions = [
            Delivery.state == WorkState.RUNNING,
            Delivery.worker_id == owner if owner else Delivery.worker_id.is_(None),
        ]
        if not gone:
            conditions.append(Delivery.lease_expires_at <= now)
        with sessions.begin() as session:
            result = session.execute(
                update(Delivery)
                .where(*conditions)
                .values(state=WorkState.QUEUED, worker_id=None, lease_expires_at=None)
            )
        count = int(result.rowcount)  # type: ignore[attr-defined]
        if count:
            reclaimed += count
            logger.warning("deliveries requeued", extra={"count": count, "dead_sender": owner})
    return reclaimed


def requeue_deliveries(
    sessions: sessionmaker[Session],
    *,
    job_id: int | None = None,
    failed: bool = False,
) -> int:
    """Queue failed deliveries again by hand (``dicom-node retry``), with fresh attempts.

    ``job_id`` limits it to that job's deliveries; ``failed`` takes every failed one.

    Raises
    ------
    ValueError
        When neither is given.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if job_id is None and not failed:
        raise ValueError("give job_id or failed=True")
    condition = Delivery.state == WorkState.FAILED
    if job_id is not None:
        condition = condition & (Delivery.job_id == job_id)
    with sessions.begin() as session:
        result = session.execute(
            update(Delivery)
            .where(condition)
            .values(
                state=WorkState.QUEUED,
                attempts=0,
                next_attempt_at=utcnow(),
                error=None,
                permanent_failures=0,
                last_status=None,
                updated_at=utcnow(),
            )
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


def counts_by_state(session: Session) -> dict[str, int]:
    """How many deliveries are in each state (states with none are left out)."""
    rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
    return {str(state): count for state, count in rows}
