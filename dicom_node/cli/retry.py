"""``dicom-node retry -c CONFIG (--job ID | --failed)``: queue failed work again.

``--job ID`` requeues that job if it failed or was skipped (it runs again and its
results replace the earlier ones), and re-sends its failed deliveries and notifications
if it is done. ``--failed`` requeues every failed job, delivery and notification. Requeued
work starts with a fresh attempt count; a running node picks it up at its next scan. The
audit trail gets one ``requeued`` line per job (its study and model), per delivery (its
result object and destination) and per notification (its target), with who asked, so
that a study's history shows its requeues.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit, close_audit_log, open_audit_log
from dicom_node.config import load_config
from dicom_node.db.schema import Delivery, Job, Notification, Study, WorkState
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work.delivery_queue import requeue_deliveries
from dicom_node.work.jobs import requeue_jobs
from dicom_node.work.notification_queue import requeue_notifications


def add_parser(subparsers: Any) -> None:
    """Register ``retry`` and its options."""
    parser = subparsers.add_parser("retry", help="requeue a failed job, or all failed work")
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", type=int, metavar="ID", help="requeue this job (see status)")
    which.add_argument(
        "--failed",
        action="store_true",
        help="requeue every failed job, delivery and notification",
    )
    parser.set_defaults(run=run)


# Ids per query when the audit lines are written (SQLite allows a few thousand bound values).
_CHUNK = 500


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[start : start + _CHUNK] for start in range(0, len(ids), _CHUNK)]


def audit_requeued(
    sessions: sessionmaker[Session],
    jobs: Sequence[int],
    deliveries: Sequence[int],
    notifications: Sequence[int],
) -> None:
    """One ``requeued`` audit line per job, delivery and notification, naming what it
    belongs to."""
    by = getpass.getuser()
    with sessions() as session:
        for chunk in _chunks(jobs):
            for job_id, study_uid, model in session.execute(
                select(Job.id, Study.study_instance_uid, Job.model_name)
                .join(Study, Study.id == Job.study_id)
                .where(Job.id.in_(chunk))
            ):
                audit(AuditEvent.REQUEUED, job_id=job_id, study_uid=study_uid, model=model, by=by)
        for chunk in _chunks(deliveries):
            for delivery_id, job_id, result_uid, peer in session.execute(
                select(
                    Delivery.id, Delivery.job_id, Delivery.sop_instance_uid, Delivery.peer_name
                ).where(Delivery.id.in_(chunk))
            ):
                audit(
                    AuditEvent.REQUEUED,
                    delivery_id=delivery_id,
                    job_id=job_id,
                    result_sop_uid=result_uid,
                    destination=peer,
                    by=by,
                )
        for chunk in _chunks(notifications):
            for notification_id, job_id, target in session.execute(
                select(Notification.id, Notification.job_id, Notification.target).where(
                    Notification.id.in_(chunk)
                )
            ):
                audit(
                    AuditEvent.REQUEUED,
                    notification_id=notification_id,
                    job_id=job_id,
                    target=target,
                    by=by,
                )


def run(args: argparse.Namespace) -> int:
    """Requeue and print what was requeued; 1 when the job does not exist or is active."""
    config = load_config(args.config)
    engine = create_db_engine(config.node.database_url)
    sessions = session_factory(engine)
    handler = open_audit_log(config.audit, "cli")
    try:
        if args.failed:
            jobs = requeue_jobs(sessions, failed=True)
            deliveries = requeue_deliveries(sessions, failed=True)
            notifications = requeue_notifications(sessions, failed=True)
        else:
            with sessions() as session:
                job = session.get(Job, args.job)
                done = job is not None and job.state == WorkState.DONE
            jobs, deliveries, notifications = [], [], []
            if done:
                deliveries = requeue_deliveries(sessions, job_id=args.job)
                notifications = requeue_notifications(sessions, job_id=args.job)
            else:
                jobs = requeue_jobs(sessions, job_id=args.job)
        audit_requeued(sessions, jobs, deliveries, notifications)
    except LookupError as exc:
        print(f"retry: {exc.args[0]}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
        close_audit_log(handler)
    shown = ", ".join(str(i) for i in jobs) or "none"
    print(
        f"requeued {len(jobs)} job(s) ({shown}), {len(deliveries)} delivery(ies) "
        f"and {len(notifications)} notification(s)"
    )
    return 0
