"""``dicom-node retry -c CONFIG (--job ID | --failed)``: queue failed work again.

``--job ID`` requeues that job if it failed or was skipped (it runs again and its
results replace the earlier ones), and re-sends its failed deliveries and notifications
if it is done. ``--failed`` requeues every failed job, delivery and notification. Requeued
work starts with a fresh attempt count; a running node picks it up at its next scan.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from dicom_node.audit import AuditEvent, audit, close_audit_log, open_audit_log
from dicom_node.config import load_config
from dicom_node.db.schema import Job, WorkState
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
            jobs, deliveries, notifications = [], 0, 0
            if done:
                deliveries = requeue_deliveries(sessions, job_id=args.job)
                notifications = requeue_notifications(sessions, job_id=args.job)
            else:
                jobs = requeue_jobs(sessions, job_id=args.job)
        audit(
            AuditEvent.REQUEUED,
            job_id=args.job,
            job_ids=jobs,
            deliveries=deliveries,
            notifications=notifications,
            by=getpass.getuser(),
        )
    except LookupError as exc:
        print(f"retry: {exc.args[0]}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
        close_audit_log(handler)
    shown = ", ".join(str(i) for i in jobs) or "none"
    print(
        f"requeued {len(jobs)} job(s) ({shown}), {deliveries} delivery(ies) "
        f"and {notifications} notification(s)"
    )
    return 0
