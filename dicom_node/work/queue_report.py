"""The queue at a glance, for ``dicom-node status``: jobs, deliveries and notifications
by state.

Each function is a status section ``(session, config) -> dict`` (see
`dicom_node.cli.status`); every state is listed, zeros included, so that scripts
reading ``status --json`` find every key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig
from dicom_node.db.leases import counts_by_state
from dicom_node.db.schema import Delivery, Job, Notification, WorkState, utcnow
from dicom_node.work.notification_queue import waiting_for_results

RECENT_FAILURES = 10
RECENT_CHAIN_STEPS = 20
JOB_STATES = [s for s in WorkState if s is not WorkState.WAITING_COMMITMENT]


def jobs_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """Jobs by state, and how long the oldest queued job has waited (seconds)."""
    counts = counts_by_state(session, Job)
    oldest = session.scalar(
        select(Job.created_at)
        .where(Job.state == WorkState.QUEUED)
        .order_by(Job.created_at)
        .limit(1)
    )
    report: dict[str, Any] = {state.value: int(counts.get(state, 0)) for state in JOB_STATES}
    report["oldest_queued_seconds"] = (
        None if oldest is None else round((utcnow() - oldest).total_seconds(), 1)
    )
    return report


def deliveries_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """Deliveries by state."""
    counts = counts_by_state(session, Delivery)
    return {state.value: int(counts.get(state, 0)) for state in WorkState}


def notifications_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """Notifications by state, and how many of the queued wait for their results to be
    delivered (or committed) first."""
    counts = counts_by_state(session, Notification)
    report: dict[str, Any] = {state.value: int(counts.get(state, 0)) for state in JOB_STATES}
    report["waiting_for_results"] = waiting_for_results(session)
    return report


def _recent_jobs(session: Session, state: WorkState) -> dict[str, str]:
    """The most recent jobs in a final state, each with its error or reason."""
    jobs = session.execute(
        select(Job.id, Job.model_name, Job.error, Job.finished_at)
        .where(Job.state == state)
        .order_by(Job.finished_at.desc())
        .limit(RECENT_FAILURES)
    ).all()
    return {f"job {row.id} ({row.model_name})": row.error or "" for row in jobs}


def skipped_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """The most recent skipped jobs, each with why the model could not take the series."""
    return _recent_jobs(session, WorkState.SKIPPED)


def failures_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """The most recent failed jobs, deliveries and notifications, each with its error."""
    deliveries = session.execute(
        select(Delivery.id, Delivery.job_id, Delivery.peer_name, Delivery.error)
        .where(Delivery.state == WorkState.FAILED)
        .order_by(Delivery.updated_at.desc())
        .limit(RECENT_FAILURES)
    ).all()
    report: dict[str, Any] = _recent_jobs(session, WorkState.FAILED)
    report.update(
        {
            f"delivery {row.id} (job {row.job_id} -> {row.peer_name})": row.error or ""
            for row in deliveries
        }
    )
    notifications = session.execute(
        select(Notification.id, Notification.job_id, Notification.target, Notification.error)
        .where(Notification.state == WorkState.FAILED)
        .order_by(Notification.updated_at.desc())
        .limit(RECENT_FAILURES)
    ).all()
    report.update(
        {
            f"notification {row.id} (job {row.job_id} -> {row.target})": row.error or ""
            for row in notifications
        }
    )
    return report


def _step_name(config: NodeConfig, job: Job) -> str:
    """``route/step`` of a chain's job; a first step's job is named by its model."""
    if job.step:
        return f"{job.route_name}/{job.step}"
    for route_name in job.route_name.split("+"):
        route = next((r for r in config.routes if r.name == route_name), None)
        step = None if route is None else route.first_step_of(job.model_name)
        if step is not None:
            return f"{route_name}/{step.step_name}"
    return job.route_name


def chains_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """The most recent later steps of chained routes with the jobs they ran after, each
    with its state and why (a condition that did not hold, a step before that failed)."""
    later = session.scalars(
        select(Job).where(Job.step != "").order_by(Job.id.desc()).limit(RECENT_CHAIN_STEPS)
    ).all()
    upstream_ids = {job.upstream_job_id for job in later if job.upstream_job_id} - {
        job.id for job in later
    }
    earlier = session.scalars(select(Job).where(Job.id.in_(upstream_ids))).all()
    report: dict[str, Any] = {}
    for job in sorted([*later, *earlier], key=lambda row: row.id):
        after = f" after job {job.upstream_job_id}" if job.upstream_job_id else ""
        reason = f": {job.error}" if job.error else ""
        report[f"job {job.id} {_step_name(config, job)} ({job.model_name})"] = (
            f"{job.state}{after}{reason}"
        )
    return report
