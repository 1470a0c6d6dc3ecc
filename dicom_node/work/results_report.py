"""What each model found per study, read back from the jobs' findings for review.

One row per (job, series, label), flat so that a CSV loads straight into a notebook
for agreement analysis against radiologists' reads (keyed by accession number or
Study Instance UID). Patient names and IDs are not part of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.db.schema import Job, Study, WorkState


@dataclass(frozen=True)
class FindingRow:
    """One label of one series as a model saw it."""

    job_id: int
    finished_at: str
    model: str
    model_version: str
    mode: str
    route: str
    study_uid: str
    accession_number: str | None
    study_date: str | None
    series_uid: str
    task: str
    label: str
    threshold: float
    probability: float | None
    positive: bool
    volume_ml: float | None
    voxels: int | None
    boxes: int | None
    files: list[str]

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON-able values."""
        return asdict(self)


def _rows_of(job: Job, study: Study) -> list[FindingRow]:
    findings = job.findings or {}
    files = [str(path) for path in findings.get("files", [])]
    rows = []
    for series in findings.get("series", []):
        for label in series.get("labels", []):
            rows.append(
                FindingRow(
                    job_id=job.id,
                    finished_at=job.finished_at.isoformat() if job.finished_at else "",
                    model=job.model_name,
                    model_version=str(series.get("model_version", "")),
                    mode=job.mode,
                    route=job.route_name,
                    study_uid=study.study_instance_uid,
                    accession_number=study.accession_number,
                    study_date=study.study_date,
                    series_uid=str(series.get("series_uid", "")),
                    task=str(series.get("task", "")),
                    label=str(label["label"]),
                    threshold=float(label.get("threshold", 0.5)),
                    probability=label.get("probability"),
                    positive=bool(label.get("positive", False)),
                    volume_ml=label.get("volume_ml"),
                    voxels=label.get("voxels"),
                    boxes=label.get("boxes"),
                    files=files,
                )
            )
    return rows


def finding_rows(
    session: Session, *, model: str | None = None, since: datetime | None = None
) -> list[FindingRow]:
    """The findings of every finished job, oldest first, optionally of one model and recent.

    Raises
    ------
    ValueError
        When ``since`` is a naive datetime.
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    if since is not None and since.tzinfo is None:
        raise ValueError(f"since must be timezone-aware, got {since!r}")
    query = (
        select(Job, Study)
        .join(Study, Job.study_id == Study.id)
        .where(Job.state == WorkState.DONE)
        .order_by(Job.finished_at, Job.id)
    )
    if model is not None:
        query = query.where(Job.model_name == model)
    if since is not None:
        query = query.where(Job.finished_at >= since)
    return [row for job, study in session.execute(query).tuples() for row in _rows_of(job, study)]
