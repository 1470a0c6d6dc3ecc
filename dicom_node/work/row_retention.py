"""Forgetting finished studies: every row of a study goes once retention allows.

A study whose last instance is older than ``retention.keep_hours``, that is finished
(routed or skipped), and whose jobs all finished more than ``keep_hours`` ago with no
delivery or notification still in progress loses its ``studies``, ``series``,
``instances``, ``jobs``, ``deliveries`` and ``notifications`` rows. Files go first
(`dicom_node.work.retention` removes the instances and outboxes in the same pass), then
the rows, in batches of :data:`BATCH_STUDIES` studies, each batch one short transaction,
so that PostgreSQL never holds long locks and the listener's writes on SQLite wait at
most one batch.
The audit trail keeps the study's history (one ``study-removed`` line each).

A study re-sent after its rows went is a new study to the node: received, routed and
processed again.

Only a study without instance rows is forgotten (retention removes each instance's file
with its row), so that no spool file outlives its row: orphan reconciliation would
index such a file again, and the study would be processed again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.db.schema import (
    Delivery,
    Instance,
    Job,
    Notification,
    Series,
    Study,
    StudyState,
    WorkState,
    utcnow,
)

logger = logging.getLogger(__name__)

BATCH_STUDIES = 200
# Work in progress: retention never touches a study with a job or delivery in these.
ACTIVE = (WorkState.QUEUED, WorkState.RUNNING, WorkState.WAITING_COMMITMENT)
FINISHED_STUDY_STATES = (StudyState.ROUTED, StudyState.SKIPPED)


def _forgettable(keep_hours: float) -> ColumnElement[bool]:
    """The condition on ``Study`` rows that may be forgotten now."""
    cutoff = utcnow() - timedelta(hours=keep_hours)
    busy_job = exists().where(
        Job.study_id == Study.id,
        Job.state.in_(ACTIVE) | (func.coalesce(Job.finished_at, Job.created_at) > cutoff),
    )
    busy_delivery = exists().where(
        Delivery.job_id == Job.id, Job.study_id == Study.id, Delivery.state.in_(ACTIVE)
    )
    busy_notification = exists().where(
        Notification.study_id == Study.id, Notification.state.in_(ACTIVE)
    )
    return (
        Study.state.in_(FINISHED_STUDY_STATES)
        & (Study.last_received_at <= cutoff)
        & ~busy_job
        & ~busy_delivery
        & ~busy_notification
    )


def _forget_batch(session: Session, keep_hours: float) -> int:
    """Delete one batch of forgettable studies with all their rows; how many studies."""
    studies = session.execute(
        select(Study.id, Study.study_instance_uid, Study.instance_count, Study.patient_id)
        .where(_forgettable(keep_hours), ~exists().where(Instance.study_id == Study.id))
        .order_by(Study.id)
        .limit(BATCH_STUDIES)
        .with_for_update(skip_locked=True)
    ).all()
    if not studies:
        return 0
    ids = [row.id for row in studies]
    jobs = select(Job.id).where(Job.study_id.in_(ids))
    session.execute(delete(Delivery).where(Delivery.job_id.in_(jobs)))
    session.execute(delete(Notification).where(Notification.study_id.in_(ids)))
    removed_jobs = session.execute(delete(Job).where(Job.study_id.in_(ids)).returning(Job.study_id))
    job_counts: dict[int, int] = {}
    for (study_id,) in removed_jobs:
        job_counts[study_id] = job_counts.get(study_id, 0) + 1
    session.execute(delete(Series).where(Series.study_id.in_(ids)))
    session.execute(delete(Study).where(Study.id.in_(ids)))
    for row in studies:
        audit(
            AuditEvent.STUDY_REMOVED,
            study_uid=row.study_instance_uid,
            instances=row.instance_count,
            jobs=job_counts.get(row.id, 0),
            patient_id=row.patient_id,
        )
    return len(studies)


def forget_finished_studies(sessions: sessionmaker[Session], keep_hours: float) -> int:
    """Delete the rows of every study retention allows, batch by batch; how many studies.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; batches committed before stay deleted.
    """
    total = 0
    while True:
        with sessions.begin() as session:
            count = _forget_batch(session, keep_hours)
        total += count
        if count < BATCH_STUDIES:
            break
    if total:
        logger.info("retention removed study rows", extra={"studies": total})
    return total
