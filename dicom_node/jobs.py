"""The job queue in the database: claim, lease, finish, retry, reclaim, requeue.

A worker claims the oldest due job with one guarded statement::

    UPDATE jobs SET state='running', worker_id=:me, attempts=attempts+1, ...
     WHERE id = (SELECT id FROM jobs WHERE state='queued' AND not_before <= :now
                 ORDER BY not_before, id LIMIT 1 FOR UPDATE SKIP LOCKED)
       AND state = 'queued'
    RETURNING id

On PostgreSQL the sub-select's ``FOR UPDATE SKIP LOCKED`` lets many workers on many
machines claim different jobs without waiting on each other; on SQLite (which renders
no ``FOR UPDATE``) the single statement is atomic under the database write lock. Every
later change to a running job is guarded by ``worker_id`` and ``state``, so that a
worker whose lease was taken over (it stalled, or was presumed dead) can never
overwrite the new owner's work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.metrics import JOBS_FINISHED
from dicom_node.ownership import owner_is_gone
from dicom_node.schema import Job, Study, WorkState, utcnow

logger = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({WorkState.DONE, WorkState.FAILED, WorkState.SKIPPED})


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker owns until its lease expires."""

    id: int
    study_id: int
    study_instance_uid: str
    generation: int
    study_generation: int
    model_name: str
    series_uids: list[str]
    destinations: list[str]
    attempts: int
    worker_id: str
    created_at: datetime


def claim_job(
    sessions: sessionmaker[Session], worker_id: str, lease_seconds: float
) -> ClaimedJob | None:
    """Claim the oldest due queued job for ``worker_id``, or None when there is none.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; nothing is claimed then.
    """
    now = utcnow()
    due = (
        select(Job.id)
        .where(Job.state == WorkState.QUEUED, Job.not_before <= now)
        .order_by(Job.not_before, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with sessions.begin() as session:
        job_id = session.execute(
            update(Job)
            .where(Job.id == due, Job.state == WorkState.QUEUED)
            .values(
                state=WorkState.RUNNING,
                worker_id=worker_id,
                attempts=Job.attempts + 1,
                started_at=now,
                finished_at=None,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(Job.id)
        ).scalar_one_or_none()
        if job_id is None:
            return None
        job = session.get_one(Job, job_id)
        study = session.get_one(Study, job.study_id)
        return ClaimedJob(
            id=job.id,
            study_id=job.study_id,
            study_instance_uid=study.study_instance_uid,
            generation=job.generation,
            study_generation=study.generation,
            model_name=job.model_name,
            series_uids=list(job.series_uids),
            destinations=list(job.destinations),
            attempts=job.attempts,
            worker_id=worker_id,
            created_at=job.created_at,
        )


def owned(job: ClaimedJob) -> list[ColumnElement[bool]]:
    """The WHERE clauses that hold only while ``job`` is still this worker's."""
    return [Job.id == job.id, Job.worker_id == job.worker_id, Job.state == WorkState.RUNNING]


def renew_lease(sessions: sessionmaker[Session], job: ClaimedJob, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer this worker's (stop working on it).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    with sessions.begin() as session:
        result = session.execute(
            update(Job)
            .where(*owned(job))
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def end_job(
    session: Session,
    job: ClaimedJob,
    state: WorkState,
    *,
    error: str | None = None,
    timings: dict[str, float] | None = None,
) -> bool:
    """Set a terminal state in the caller's transaction; False if the job is not ours.

    The caller adds the job's deliveries in the same transaction when ``state`` is DONE,
    so that results are recorded exactly when the job is.
    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    values: dict[str, object] = {
        "state": state,
        "finished_at": utcnow(),
        "lease_expires_at": None,
        "error": error,
    }
    if timings is not None:
        values["timings"] = timings
    result = session.execute(update(Job).where(*owned(job)).values(**values))
    ok = bool(result.rowcount)  # type: ignore[attr-defined]
    if ok:
        JOBS_FINISHED.labels(model=job.model_name, state=str(state)).inc()
    return ok


def retry_or_fail(
    sessions: sessionmaker[Session],
    job: ClaimedJob,
    error: str,
    *,
    max_attempts: int,
    backoff_seconds: float,
    permanent: bool = False,
) -> WorkState:
    """After a failed attempt: queue again with backoff, or fail with ``error`` kept.

    The backoff doubles per attempt (``backoff_seconds * 2**(attempts-1)``). A
    ``permanent`` error (a broken model package) fails at once: retrying cannot help.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    again = not permanent and job.attempts < max_attempts
    with sessions.begin() as session:
        if not again:
            end_job(session, job, WorkState.FAILED, error=error)
            return WorkState.FAILED
        delay = backoff_seconds * 2 ** (job.attempts - 1)
        session.execute(
            update(Job)
            .where(*owned(job))
            .values(
                state=WorkState.QUEUED,
                not_before=utcnow() + timedelta(seconds=delay),
                worker_id=None,
                lease_expires_at=None,
                error=error,
            )
        )
    return WorkState.QUEUED


def reclaim_abandoned(sessions: sessionmaker[Session]) -> int:
    """Requeue running jobs whose owner died: lease expired, or owner gone from this host.

    Safe with many processes: each requeue is guarded by the owner id seen, so a job
    renewed or finished meanwhile is left alone. The attempt that died counts.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    now = utcnow()
    with sessions() as session:
        running = session.execute(
            select(Job.id, Job.worker_id, Job.lease_expires_at).where(
                Job.state == WorkState.RUNNING
            )
        ).all()
    reclaimed = 0
    for job_id, owner, lease in running:
        expired = lease is None or lease <= now
        if not expired and not owner_is_gone(owner):
            continue
        with sessions.begin() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state == WorkState.RUNNING,
                    Job.worker_id == owner if owner is not None else Job.worker_id.is_(None),
                )
                .values(
                    state=WorkState.QUEUED,
                    worker_id=None,
                    lease_expires_at=None,
                    not_before=now,
                    error=f"requeued: worker {owner} stopped while running it",
                )
            )
        if result.rowcount:  # type: ignore[attr-defined]
            reclaimed += 1
            logger.warning("job requeued", extra={"job_id": job_id, "dead_worker": owner})
    return reclaimed


def requeue_jobs(
    sessions: sessionmaker[Session], *, job_id: int | None = None, failed: bool = False
) -> list[int]:
    """Queue jobs again by hand (``dicom-node retry``): one job, or every failed one.

    A requeued job starts with a fresh attempt count. Returns the ids requeued.

    Raises
    ------
    ValueError
        When neither or both of ``job_id`` and ``failed`` are given.
    LookupError
        When ``job_id`` names no job, or a job that is queued or running.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if (job_id is None) == (not failed):
        raise ValueError("give either job_id or failed=True")
    with sessions.begin() as session:
        if job_id is not None:
            job = session.get(Job, job_id)
            if job is None:
                raise LookupError(f"no job with id {job_id}")
            if job.state not in TERMINAL_STATES:
                raise LookupError(f"job {job_id} is {job.state}; only finished jobs are requeued")
            condition = Job.id == job_id
        else:
            condition = Job.state == WorkState.FAILED
        ids = list(
            session.scalars(
                update(Job)
                .where(condition)
                .values(
                    state=WorkState.QUEUED,
                    attempts=0,
                    not_before=utcnow(),
                    worker_id=None,
                    lease_expires_at=None,
                    finished_at=None,
                    error=None,
                )
                .returning(Job.id)
            )
        )
    logger.info("jobs requeued", extra={"count": len(ids)})
    return sorted(ids)


def counts_by_state(session: Session) -> dict[str, int]:
    """How many jobs are in each state (states with none are left out)."""
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
    return {str(state): count for state, count in rows}
