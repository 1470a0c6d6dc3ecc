"""A chain step that did not run is said in the report of the step it ran after.

Results go out per step, so the SR of a step has usually reached the archive when a
step after it fails. That report is then amended (`sr_writer.amend_report`): a new
version in its series, naming the original as predecessor, PARTIAL, with a comment
that names the step, its model and the reason. It is written to the outbox of the
step that failed and delivered where the report itself went, so ``status`` and the
audit trail show it with that step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage
from sqlalchemy.orm import Session

from dicom_node.db.schema import Job
from dicom_node.work.delivery_queue import queue_deliveries
from dicom_node.work.outbox import Outbox, OutboxFile
from sr_writer import amend_report

logger = logging.getLogger(__name__)

SR_CLASSES = frozenset({Comprehensive3DSRStorage, ComprehensiveSRStorage})


def amend_upstream_report(
    session: Session, outbox: Outbox, job_id: int, outcome: str
) -> list[OutboxFile]:
    """Queue amended reports of the step job ``job_id`` ran after, saying it ``outcome``
    (``"failed: ..."``), in the caller's transaction; the files queued.

    Nothing is amended for a job that is no later step, or when the earlier step's
    reports are gone (retention removed them): ``status`` and the audit trail still
    show the step.

    Raises
    ------
    OSError
        When the amended report cannot be written to the outbox.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    job = session.get_one(Job, job_id)
    upstream = session.get(Job, job.upstream_job_id) if job.upstream_job_id else None
    if upstream is None:
        return []
    comment = f"Chain {job.route_name!r}: step {job.step!r} (model {job.model_name}) {outcome}"
    amended = []
    for name in upstream.findings.get("files", []):
        path = Path(name)
        try:
            report = pydicom.dcmread(path)
        except OSError as exc:
            logger.warning("report to amend is gone", extra={"job_id": job_id, "error": exc})
            continue
        if report.SOPClassUID in SR_CLASSES:
            amended.append(amend_report(report, [comment]))
    if not amended:
        return []
    files = outbox.write(job_id, amended)
    queue_deliveries(session, job_id, files, upstream.destinations)
    return files
