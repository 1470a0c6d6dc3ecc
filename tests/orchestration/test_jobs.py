"""The job queue: atomic claims, leases, retry with backoff, reclaiming dead workers."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.leases import counts_by_state
from dicom_node.db.ownership import owner_id, owner_is_gone, process_owner_id
from dicom_node.db.schema import Job, WorkState, utcnow
from dicom_node.work.jobs import (
    claim_job,
    end_job,
    reclaim_abandoned,
    renew_lease,
    requeue_jobs,
    retry_or_fail,
)
from dicom_node.work.routing import route_complete_studies
from tests.orchestration.conftest import add_study, make_config


@pytest.fixture
def queued(sessions: sessionmaker[Session], tmp_path: Path) -> sessionmaker[Session]:
    """Three studies routed into three queued jobs."""
    with sessions.begin() as session:
        for n in range(3):
            add_study(session, f"1.9.{n}", [{"modality": "CT"}])
    route_complete_studies(sessions, make_config(tmp_path))
    return sessions


def test_claims_are_exclusive_and_oldest_first(queued: sessionmaker[Session]) -> None:
    claims = [claim_job(queued, f"w{n}", 60) for n in range(4)]
    assert [c.study_instance_uid if c else None for c in claims] == [
        "1.9.0",
        "1.9.1",
        "1.9.2",
        None,
    ]
    first = claims[0]
    assert first is not None
    assert (first.attempts, first.worker_id, first.model_name) == (1, "w0", "ct-model")
    with queued() as session:
        assert counts_by_state(session, Job) == {"running": 3}


def test_only_the_owner_may_finish_or_renew(queued: sessionmaker[Session]) -> None:
    job = claim_job(queued, "w1", 60)
    assert job is not None
    impostor = type(job)(**{**job.__dict__, "worker_id": "w2"})
    assert not renew_lease(queued, impostor, 60)
    with queued.begin() as session:
        assert not end_job(session, impostor, WorkState.DONE)
    assert renew_lease(queued, job, 60)
    with queued.begin() as session:
        assert end_job(session, job, WorkState.DONE, timings={"model": 1.5})
    with queued() as session:
        row = session.get_one(Job, job.id)
        assert (row.state, row.timings, row.lease_expires_at) == (
            WorkState.DONE,
            {"model": 1.5},
            None,
        )


def test_retry_with_doubling_backoff_then_fail_with_error_kept(
    queued: sessionmaker[Session],
) -> None:
    delays = []
    for attempt in (1, 2, 3):
        job = claim_job(queued, "w", 60)
        assert job is not None and job.attempts == attempt
        before = utcnow()
        assert (
            retry_or_fail(
                queued, job, "boom", max_attempts=4, backoff_seconds=10, backoff_max_seconds=30
            )
            == WorkState.QUEUED
        )
        with queued.begin() as session:
            row = session.get_one(Job, job.id)
            delays.append(round((row.next_attempt_at - before).total_seconds()))
            row.next_attempt_at = utcnow() - timedelta(seconds=1)  # due for the next claim
    assert delays == [10, 20, 30]  # 40 capped at 30
    job = claim_job(queued, "w", 60)
    assert job is not None and job.attempts == 4
    state = retry_or_fail(
        queued, job, "boom 4", max_attempts=4, backoff_seconds=10, backoff_max_seconds=30
    )
    assert state == WorkState.FAILED
    with queued() as session:
        row = session.get_one(Job, job.id)
        assert (row.state, row.error) == (WorkState.FAILED, "boom 4")


def test_permanent_error_fails_at_once(queued: sessionmaker[Session]) -> None:
    job = claim_job(queued, "w", 60)
    assert job is not None
    state = retry_or_fail(
        queued,
        job,
        "bad package",
        max_attempts=3,
        backoff_seconds=0,
        backoff_max_seconds=0,
        permanent=True,
    )
    assert state == WorkState.FAILED


def dead_owner() -> str:
    """The owner id a process had that has exited since."""
    code = "from dicom_node.db.ownership import owner_id; print(owner_id('worker'))"
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_reclaims_dead_local_owner_at_once_but_not_live_or_remote_ones(
    queued: sessionmaker[Session],
) -> None:
    live = claim_job(queued, owner_id("worker"), 600)
    dead = claim_job(queued, dead_owner(), 600)
    remote = claim_job(queued, "other-host:123:456:worker:1", 600)
    assert live and dead and remote
    assert reclaim_abandoned(queued) == 1
    with queued() as session:
        states = {j.id: j.state for j in session.scalars(select(Job))}
    assert states == {
        live.id: WorkState.RUNNING,
        dead.id: WorkState.QUEUED,
        remote.id: WorkState.RUNNING,
    }
    with queued.begin() as session:  # the remote worker's lease runs out
        session.execute(update(Job).where(Job.id == remote.id).values(lease_expires_at=utcnow()))
    assert reclaim_abandoned(queued) == 1
    again = claim_job(queued, "w", 60)
    assert again is not None and again.attempts == 2  # the attempt that died counts


def test_owner_liveness() -> None:
    assert not owner_is_gone(owner_id("worker"))
    assert owner_is_gone(dead_owner())
    assert not owner_is_gone("elsewhere:1:2:worker:3")
    assert owner_is_gone(None)
    assert process_owner_id().count(":") == 2


def test_requeue_by_hand(queued: sessionmaker[Session]) -> None:
    job = claim_job(queued, "w", 60)
    assert job is not None
    with pytest.raises(LookupError, match=f"job {job.id} is running"):
        requeue_jobs(queued, job_id=job.id)
    retry_or_fail(queued, job, "x", max_attempts=1, backoff_seconds=0, backoff_max_seconds=0)
    with pytest.raises(LookupError, match="no job with id 999"):
        requeue_jobs(queued, job_id=999)
    with pytest.raises(ValueError, match="either job_id or failed"):
        requeue_jobs(queued)
    assert requeue_jobs(queued, failed=True) == [job.id]
    with queued() as session:
        row = session.get_one(Job, job.id)
        assert (row.state, row.attempts, row.error) == (WorkState.QUEUED, 0, None)
