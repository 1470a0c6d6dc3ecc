"""The job queue in the database: claim, lease, finish, retry, reclaim, requeue.

A worker claims the oldest due job, owns it under a lease it renews while it runs, and
ends it (done, skipped), queues it again after a backoff, or fails it: the claim,
lease and backoff rules are the ones deliveries follow too (`dicom_node.db.leases`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import leases
from dicom_node.db.schema import Job, Study, WorkState, utcnow
from dicom_node.metrics import JOBS_FINISHED

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
    route_name: str = ""
    # A later step of a chain (`dicom_node.work.chain`): its name, and its upstream's job.
    step: str = ""
    upstream_job_id: int = 0


def claim_job(
    sessions: sessionmaker[Session], worker_id: str, lease_seconds: float
) -> ClaimedJob | None:
    """Claim the oldest due queued job for ``worker_id``, or None when there is none.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; nothing is claimed then.
    """
    claimed = leases.claim_due(
        sessions, Job, worker_id, lease_seconds=lease_seconds, limit=1, stamp="started_at"
    )
    if not claimed:
        return None
    with sessions() as session:  # the job is ours now: read it outside the claim
        job = session.get_one(Job, claimed[0].id)
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
            route_name=job.route_name,
            step=job.step,
            upstream_job_id=job.upstream_job_id,
        )


def owned(job: ClaimedJob) -> list[ColumnElement[bool]]:
    """The WHERE clauses that hold only while ``job`` is still this worker's."""
    return leases.owned_by(Job, job.worker_id, job.id)


def renew_lease(sessions: sessionmaker[Session], job: ClaimedJob, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer this worker's (stop working on it).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    with sessions.begin() as session:
        return bool(leases.renew(session, Job, lease_seconds, owned(job)))


def end_job(
    session: Session,
    job: ClaimedJob,
    state: WorkState,
    *,
    error: str | None = None,
    timings: dict[str, float] | None = None,
    findings: dict[str, Any] | None = None,
) -> bool:
    """Set a terminal state in the caller's transaction; False if the job is not ours.

    The caller adds the job's deliveries in the same transaction when ``state`` is DONE,
    so that results (and ``findings``, `dicom_node.work.findings`) are recorded exactly
    when the job is.

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
    if findings is not None:
        values["findings"] = findings
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
    backoff_max_seconds: float,
    permanent: bool = False,
    on_failed: Callable[[Session], object] | None = None,
) -> WorkState:
    """After a failed attempt: queue again with backoff, or fail with ``error`` kept.

    The backoff doubles per attempt (``backoff_seconds * 2**(attempts-1)``), up to
    ``backoff_max_seconds``. A ``permanent`` error (a broken model package) fails at
    once: retrying cannot help. ``on_failed`` runs in the transaction that fails the
    job (a chain's later steps are marked not run there).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    again = not permanent and job.attempts < max_attempts
    with sessions.begin() as session:
        if not again:
            if end_job(session, job, WorkState.FAILED, error=error) and on_failed is not None:
                on_failed(session)
            return WorkState.FAILED
        delay = leases.backoff_seconds(job.attempts, backoff_seconds, backoff_max_seconds)
        session.execute(
            update(Job)
            .where(*owned(job))
            .values(
                state=WorkState.QUEUED,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
                worker_id=None,
                lease_expires_at=None,
                error=error,
            )
        )
    return WorkState.QUEUED


def reclaim_abandoned(sessions: sessionmaker[Session]) -> int:
    """Requeue running jobs whose owner died: lease expired, or owner gone from this host
    (`dicom_node.db.leases.reclaim_abandoned`); how many. The attempt that died counts.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """

    def requeued(owner: str | None) -> dict[str, object]:
        error = f"requeued: worker {owner} stopped while running it"
        return {"next_attempt_at": utcnow(), "error": error}

    reclaimed = leases.reclaim_abandoned(sessions, Job, requeued)
    for owner, ids in reclaimed.items():
        for job_id in ids:
            logger.warning("job requeued", extra={"job_id": job_id, "dead_worker": owner})
    return sum(len(ids) for ids in reclaimed.values())


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
        ids = leases.requeue(session, Job, condition, {"finished_at": None})
    logger.info("jobs requeued", extra={"count": len(ids)})
    return ids
