"""Notifications in the database: queue them with their job, claim those ready, record.

A finished live job gets one notification per ``[[notifications]]`` entry that applies to
its routes and model, in the transaction that marks it done (shadow jobs announce
nothing: their results are not for clinical use). Claims, leases, backoff and the
transient/permanent policy are the deliveries' (`dicom_node.db.leases`,
`dicom_node.work.delivery_queue.next_try`). A queued notification is claimed only when

- none of its job's deliveries is still queued, running or awaiting storage commitment
  (the archive holds the results, committed where the peer commits), and
- no earlier notification of the same study to the same target is queued or running
  (a later one waits for the earlier: in order per study and target).

A job run again re-queues its notifications with a fresh idempotency key and a new place
in the order: it is a new announcement, not a retry of the old one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Exists, exists, func, select, tuple_
from sqlalchemy.orm import Session, aliased, sessionmaker

from dicom_node.config import NotificationBase
from dicom_node.db import leases
from dicom_node.db.schema import Delivery, Job, Notification, WorkState, utcnow
from dicom_node.work.delivery_queue import (
    reclaim_abandoned_sends,
    record_send,
    requeue_failed_sends,
)

logger = logging.getLogger(__name__)

# Deliveries in these states: the archive does not hold (or has not committed) them yet.
UNSETTLED = (WorkState.QUEUED, WorkState.RUNNING, WorkState.WAITING_COMMITMENT)
ACTIVE = (WorkState.QUEUED, WorkState.RUNNING)


@dataclass(frozen=True)
class ClaimedNotification:
    """A notification this process sends until its lease expires."""

    id: int
    job_id: int
    target: str
    attempts: int
    permanent_failures: int
    worker_id: str


def queue_notifications(session: Session, job_id: int, entries: Sequence[NotificationBase]) -> int:
    """Queue (or re-queue) the notifications of a finished job, in the caller's
    transaction; how many.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    job = session.get_one(Job, job_id)
    if job.mode == "shadow":
        return 0
    routes = job.route_name.split("+")
    now = utcnow()
    queued = 0
    for entry in entries:
        if not entry.applies_to(routes, job.model_name):
            continue
        row = session.scalar(
            select(Notification).where(
                Notification.job_id == job_id, Notification.target == entry.name
            )
        )
        if row is None:
            row = Notification(job_id=job_id, study_id=job.study_id, target=entry.name)
            session.add(row)
        row.state, row.attempts, row.next_attempt_at = WorkState.QUEUED, 0, now
        row.idempotency_key, row.queued_at = uuid.uuid4().hex, now
        row.worker_id = row.lease_expires_at = row.last_status = row.error = row.sent_at = None
        row.permanent_failures = 0
        queued += 1
    return queued


def _unsettled_deliveries() -> Exists:
    """Whether a notification's job still has results the archive does not hold."""
    return exists().where(Delivery.job_id == Notification.job_id, Delivery.state.in_(UNSETTLED))


def _ready() -> list[ColumnElement[bool]]:
    """The conditions under which a queued notification may go (module docstring)."""
    earlier = aliased(Notification)
    waits_for_earlier = exists().where(
        earlier.study_id == Notification.study_id,
        earlier.target == Notification.target,
        earlier.state.in_(ACTIVE),
        tuple_(earlier.queued_at, earlier.id) < tuple_(Notification.queued_at, Notification.id),
    )
    return [~_unsettled_deliveries(), ~waits_for_earlier]


def claim_notifications(
    sessions: sessionmaker[Session], worker_id: str, limit: int, lease_seconds: float
) -> list[ClaimedNotification]:
    """Claim up to ``limit`` notifications that are due and ready, oldest first.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; nothing is claimed then.
    """
    rows = leases.claim_due(
        sessions,
        Notification,
        worker_id,
        lease_seconds=lease_seconds,
        limit=limit,
        where=_ready(),
        stamp="updated_at",
        returning=[
            Notification.job_id,
            Notification.target,
            Notification.attempts,
            Notification.permanent_failures,
        ],
    )
    return [ClaimedNotification(**row._asdict(), worker_id=worker_id) for row in rows]


def undelivered(session: Session, job_id: int) -> list[int]:
    """The ids of the job's deliveries that ended without the archive holding them."""
    return list(
        session.scalars(
            select(Delivery.id)
            .where(Delivery.job_id == job_id, Delivery.state != WorkState.DONE)
            .order_by(Delivery.id)
        )
    )


def record_notification(
    session: Session,
    claimed: ClaimedNotification,
    state: WorkState,
    *,
    http_status: int | None,
    error: str | None,
    retry_at: datetime | None = None,
    permanent_failures: int | None = None,
) -> bool:
    """Record one try in the caller's transaction; False when the row is not ours any
    more (re-queued by a job run again, or reclaimed after our lease ran out).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return record_send(
        session,
        Notification,
        claimed.worker_id,
        claimed.id,
        state,
        status=http_status,
        error=error,
        retry_at=retry_at,
        permanent_failures=permanent_failures,
        stamp_done="sent_at",
    )


def reclaim_abandoned_notifications(sessions: sessionmaker[Session]) -> int:
    """Re-queue running notifications whose sender died; how many.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return reclaim_abandoned_sends(sessions, Notification, logger)


def requeue_notifications(
    sessions: sessionmaker[Session], *, job_id: int | None = None, failed: bool = False
) -> list[int]:
    """Queue failed notifications again by hand (``dicom-node retry``), with fresh
    attempts and the same idempotency key (it is the same announcement); the ids requeued.

    Raises
    ------
    ValueError
        When neither ``job_id`` nor ``failed`` is given.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    return requeue_failed_sends(sessions, Notification, job_id=job_id, failed=failed)


def waiting_for_results(session: Session) -> int:
    """Queued notifications whose job's results the archive does not hold yet."""
    waiting = select(func.count(Notification.id)).where(
        Notification.state == WorkState.QUEUED, _unsettled_deliveries()
    )
    return int(session.scalar(waiting) or 0)
