"""The work queues' shared rules: claim due rows, own them under a lease, back off.

Jobs, deliveries and notifications (`dicom_node.db.schema.LeasedWork`) are queues in
the database. A process claims due rows with one guarded statement::

    WITH due AS MATERIALIZED (SELECT id FROM <table> WHERE state = 'queued'
        AND next_attempt_at <= :now ... ORDER BY next_attempt_at, id LIMIT :n
        FOR UPDATE SKIP LOCKED)
    UPDATE <table> SET state = 'running', worker_id = :me, attempts = attempts + 1,
        lease_expires_at = :now + :lease ...
     WHERE id IN (SELECT id FROM due) AND state = 'queued'
    RETURNING id, ...

On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets many processes on many machines claim
different rows without waiting on each other (the CTE is materialized so that the
LIMIT is applied once); on SQLite, which renders no ``FOR UPDATE``, the statement is
atomic under the database write lock. Every later change to a running row is guarded
by `owned_by` (its id, owner and state), so that a process whose lease was taken over
(it stalled, or was presumed dead) never overwrites the new owner's work. A row whose
owner is gone (`dicom_node.db.ownership`) or whose lease ran out is requeued by
`reclaim_abandoned`; the attempt that died counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.ownership import owner_is_gone
from dicom_node.db.schema import Delivery, Job, Notification, WorkState, utcnow

logger = logging.getLogger(__name__)

WorkTable = type[Job] | type[Delivery] | type[Notification]


def owned_by(
    table: WorkTable, worker_id: str, row_id: int | None = None
) -> list[ColumnElement[bool]]:
    """The WHERE clauses that hold only while the row (or every row of ``worker_id`` when
    ``row_id`` is None) is still RUNNING under that owner."""
    clauses: list[ColumnElement[bool]] = [
        table.worker_id == worker_id,
        table.state == WorkState.RUNNING,
    ]
    if row_id is not None:
        clauses.append(table.id == row_id)
    return clauses


def claim_due(
    sessions: sessionmaker[Session],
    table: WorkTable,
    worker_id: str,
    *,
    lease_seconds: float,
    limit: int,
    where: Sequence[ColumnElement[bool]] = (),
    stamp: str | None = None,
    returning: Sequence[Any] = (),
) -> Sequence[Row[Any]]:
    """Claim up to ``limit`` due rows for ``worker_id``, oldest due first, in one
    transaction (see the module docstring); one row per claim: its id, then ``returning``.

    Parameters
    ----------
    where
        Further conditions on the rows to claim (deliveries: one peer).
    stamp
        A timestamp column set to the time of the claim (jobs: started_at).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; nothing is claimed then.
    """
    now = utcnow()
    due = (
        select(table.id)
        .where(table.state == WorkState.QUEUED, table.next_attempt_at <= now, *where)
        .order_by(table.next_attempt_at, table.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        update(table)
        .where(table.id.in_(select(due.c.id)), table.state == WorkState.QUEUED)
        .values(
            state=WorkState.RUNNING,
            worker_id=worker_id,
            attempts=table.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            **({stamp: now} if stamp else {}),
        )
        .returning(table.id, *returning)
    )
    with sessions.begin() as session:
        return sorted(session.execute(statement).all(), key=lambda row: int(row[0]))


def renew(
    session: Session, table: WorkTable, lease_seconds: float, owned: Sequence[ColumnElement[bool]]
) -> int:
    """Extend the lease of the rows ``owned`` (`owned_by`) selects, in the caller's
    transaction; how many (0: none is the caller's any more).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    result = session.execute(
        update(table)
        .where(*owned)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def reclaim_abandoned(
    sessions: sessionmaker[Session],
    table: WorkTable,
    values: Callable[[str | None], Mapping[str, object]] = lambda _owner: {},
) -> dict[str | None, list[int]]:
    """Requeue running rows whose owner died: lease expired, or owner gone from this host.

    Safe with many processes: each requeue is guarded by the owner id seen, so a row
    renewed or finished meanwhile is left alone.

    Parameters
    ----------
    values
        Further columns to set, given the dead owner (jobs: the error saying who died).

    Returns
    -------
    dict
        The ids requeued, per dead owner.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    now = utcnow()
    with sessions() as session:
        running = session.execute(
            select(table.worker_id, func.min(table.lease_expires_at))
            .where(table.state == WorkState.RUNNING)
            .group_by(table.worker_id)
        ).all()
    reclaimed: dict[str | None, list[int]] = {}
    for owner, earliest_lease in running:
        gone = owner_is_gone(owner)
        if not gone and earliest_lease is not None and earliest_lease > now:
            continue
        conditions = [
            table.state == WorkState.RUNNING,
            table.worker_id == owner if owner else table.worker_id.is_(None),
        ]
        if not gone:
            conditions.append(or_(table.lease_expires_at.is_(None), table.lease_expires_at <= now))
        with sessions.begin() as session:
            ids = session.scalars(
                update(table)
                .where(*conditions)
                .values(
                    state=WorkState.QUEUED, worker_id=None, lease_expires_at=None, **values(owner)
                )
                .returning(table.id)
            ).all()
        if ids:
            reclaimed[owner] = sorted(ids)
    return reclaimed


def requeue(
    session: Session,
    table: WorkTable,
    condition: ColumnElement[bool],
    values: Mapping[str, object] | None = None,
) -> list[int]:
    """Queue the rows ``condition`` selects again with a fresh attempt count, due now, in
    the caller's transaction (``dicom-node retry``); the ids requeued.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    ids = session.scalars(
        update(table)
        .where(condition)
        .values(
            state=WorkState.QUEUED,
            attempts=0,
            next_attempt_at=utcnow(),
            worker_id=None,
            lease_expires_at=None,
            error=None,
            **(values or {}),
        )
        .returning(table.id)
    ).all()
    return sorted(ids)


def counts_by_state(session: Session, table: WorkTable) -> dict[WorkState, int]:
    """How many rows are in each state (states with none are left out)."""
    rows = session.execute(select(table.state, func.count()).group_by(table.state))
    return {WorkState(state): int(count) for state, count in rows}


def backoff_seconds(attempts: int, initial: float, cap: float) -> float:
    """Delay before the next try after ``attempts`` tries: ``initial``, doubled per try,
    at most ``cap``."""
    return float(min(initial * 2 ** max(0, attempts - 1), cap))
