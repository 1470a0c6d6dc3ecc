"""Retention: remove spooled instances and result files that nothing needs any more.

Work in progress is never touched: a study that is still receiving, or has a job or a
delivery queued, running or awaiting commitment, keeps everything. Otherwise:

- spooled instances (files and their ``instances`` rows) go once the study's last
  instance is older than ``retention.keep_hours``, or at once with
  ``delete_when_done = true`` when every job of the study is done or skipped (a failed
  job keeps its inputs, for ``dicom-node retry``, until they age out);
- a job's outbox folder goes once the job finished more than ``keep_hours`` ago, or at
  once with ``delete_when_done`` when every one of its deliveries is done (a failed
  delivery keeps its file, for ``dicom-node retry``, until it ages out); never while
  a later step of its chain is queued or running: that step reads its SEG as a mask
  (`dicom_node.work.step_input`) or amends its report (`dicom_node.work.chain_report`).

Once the instances and outboxes are gone and ``keep_hours`` have passed, the study's
rows go too (`dicom_node.work.row_retention`), and the database gives the space back
(`dicom_node.db.compaction`); the audit trail keeps its history. A study re-sent after
its instances were removed is received and processed again.
The free-disk floor itself is the listener's: below ``node.min_free_disk_mb`` it
answers C-STORE with 0xA700 (Out of Resources) instead of filling the disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.db.compaction import compact
from dicom_node.db.schema import Delivery, Instance, Job, Study, WorkState, utcnow
from dicom_node.db.timestamps import as_utc
from dicom_node.work.outbox import Outbox
from dicom_node.work.row_retention import ACTIVE, FINISHED_STUDY_STATES, forget_finished_studies

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionReport:
    """What one pass removed."""

    instances: int
    bytes: int
    outboxes: int
    studies: int


def _remove_file(path: Path, spool_root: Path) -> int:
    """Delete one file and the folders it leaves empty, up to the spool root; its size."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    parent = path.parent
    while parent != spool_root and spool_root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return size


def _studies_to_purge(session: Session, config: NodeConfig) -> list[int]:
    cutoff = utcnow() - timedelta(hours=config.retention.keep_hours)
    busy_job = exists().where(Job.study_id == Study.id, Job.state.in_(ACTIVE))
    busy_delivery = exists().where(
        Delivery.job_id == Job.id, Job.study_id == Study.id, Delivery.state.in_(ACTIVE)
    )
    has_instances = exists().where(Instance.study_id == Study.id)
    candidates = select(Study.id, Study.last_received_at).where(
        Study.state.in_(FINISHED_STUDY_STATES), has_instances, ~busy_job, ~busy_delivery
    )
    purge = []
    for study_id, last_received in session.execute(candidates):
        if last_received <= cutoff:
            purge.append(study_id)
        elif config.retention.delete_when_done:
            unfinished = session.scalar(
                select(
                    exists().where(
                        Job.study_id == study_id,
                        Job.state.not_in((WorkState.DONE, WorkState.SKIPPED)),
                    )
                )
            )
            if not unfinished:
                purge.append(study_id)
    return purge


def _jobs_to_clean(session: Session, config: NodeConfig) -> list[int]:
    cutoff = utcnow() - timedelta(hours=config.retention.keep_hours)
    pending = exists().where(Delivery.job_id == Job.id, Delivery.state.in_(ACTIVE))
    not_done = exists().where(Delivery.job_id == Job.id, Delivery.state != WorkState.DONE)
    later = aliased(Job)
    later_step_active = exists().where(later.upstream_job_id == Job.id, later.state.in_(ACTIVE))
    rows = session.execute(
        select(
            Job.id, func.coalesce(Job.finished_at, Job.created_at), not_done.label("not_done")
        ).where(
            Job.state.in_((WorkState.DONE, WorkState.FAILED, WorkState.SKIPPED)),
            ~pending,
            ~later_step_active,
        )
    ).all()
    return [
        job_id
        for job_id, finished, any_not_done in rows
        if as_utc(finished) <= cutoff or (config.retention.delete_when_done and not any_not_done)
    ]


def _remove_outboxes_of_forgotten_jobs(sessions: sessionmaker[Session], outbox: Outbox) -> int:
    """Remove the outbox folders of jobs no row names any more: a job whose delivery
    ended, or whose age passed ``keep_hours``, between this pass's choice of outboxes
    and its forgetting of rows. A folder is written only for a claimed job, whose row
    exists, so one without a row is left over."""
    if not outbox.root.is_dir():
        return 0
    folders = [int(p.name) for p in outbox.root.iterdir() if p.name.isdigit()]
    if not folders:
        return 0
    with sessions() as session:
        known = set(session.scalars(select(Job.id).where(Job.id.in_(folders))))
    return sum(outbox.remove_job(job_id) for job_id in folders if job_id not in known)


def apply_retention(sessions: sessionmaker[Session], config: NodeConfig) -> RetentionReport:
    """Remove what retention allows now (see the module docstring).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; files already removed stay removed (their rows are
        deleted in the same pass, study by study).
    """
    spool_root = config.node.storage_dir / "instances"
    outbox = Outbox(config.node.storage_dir)
    removed = freed = 0
    with sessions() as session:
        studies = _studies_to_purge(session, config)
        jobs = _jobs_to_clean(session, config)
    for study_id in studies:
        with sessions.begin() as session:
            rows = session.execute(
                select(Instance.id, Instance.path).where(Instance.study_id == study_id)
            ).all()
            for _, path in rows:
                freed += _remove_file(Path(path), spool_root)
            session.execute(delete(Instance).where(Instance.id.in_([r.id for r in rows])))
            removed += len(rows)
    outboxes = sum(outbox.remove_job(job_id) for job_id in jobs)
    forgotten = forget_finished_studies(sessions, config.retention.keep_hours)
    outboxes += _remove_outboxes_of_forgotten_jobs(sessions, outbox)
    if forgotten:
        compact(sessions)
    report = RetentionReport(removed, freed, outboxes, forgotten)
    if removed or outboxes:
        logger.info(
            "retention removed files",
            extra={"instances": removed, "bytes": freed, "outboxes": outboxes},
        )
    return report
