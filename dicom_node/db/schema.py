"""The database schema: the single source of truth for what was received, run and sent.

Every hand-over between the listener, the scheduler, the workers and delivery goes
through these tables, in transactions, so that a node killed at any moment loses
nothing and redoes at most the step that was in flight.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp in the database is UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The declarative base of every table of the node."""

    pass


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out too: SQLite drops the zone, PostgreSQL keeps it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Refuse naive datetimes; store aware ones in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use dicom_node.db.schema.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Read back as aware UTC (SQLite returns them naive)."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


UID = String(64)


class StudyState(enum.StrEnum):
    """Where a study is on its way from reception to jobs."""

    RECEIVING = "receiving"  # instances arriving; not complete yet
    COMPLETE = "complete"  # completion decided; routing and jobs pending or created
    ROUTED = "routed"  # jobs created (or skipped with a reason)
    SKIPPED = "skipped"  # no route matched


class WorkState(enum.StrEnum):
    """States shared by jobs and deliveries."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_COMMITMENT = "waiting_commitment"  # deliveries only: sent, awaiting N-EVENT-REPORT
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as their values (VARCHAR), so that adding a state needs no type migration.
    return Enum(
        cls, name=name, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e]
    )


WORK_STATE = _enum(WorkState, "work_state")


class Study(Base):
    """One study as received: its patient and study fields, counts and completion."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[StudyState] = mapped_column(
        _enum(StudyState, "study_state"), default=StudyState.RECEIVING
    )
    # Bumped each time an instance re-opens a completed study; jobs are per generation.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completion_reason: Mapped[str | None] = mapped_column(Text)
    # Why routing skipped the study (no route matched), or which routes made its jobs.
    routing_reason: Mapped[str | None] = mapped_column(Text)

    series: Mapped[list[Series]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_state_last", "state", "last_received_at"),)


class Series(Base):
    """One series of a study, with the header fields routing matches on."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    # Study- and series-level header fields (keyword -> value as text), decoded with the
    # dataset's own character set, so that routing never re-reads pixel files.
    routing_fields: Mapped[dict[str, str]] = mapped_column("headers", JSON, default=dict)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One received instance: where its file is in the spool, and what it is."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class LeasedWork:
    """The columns of a work queue's row, shared by jobs, deliveries and notifications
    (`dicom_node.db.leases`).

    A row is QUEUED until it is due (``next_attempt_at``); a process then claims it:
    RUNNING, owned by ``worker_id`` until ``lease_expires_at``, which the owner renews
    while it works, so that another process requeues the row only once its owner is
    really gone. ``attempts`` counts the claims.
    """

    id: Mapped[int] = mapped_column(primary_key=True, sort_order=-1)
    state: Mapped[WorkState] = mapped_column(WORK_STATE, default=WorkState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Job(LeasedWork, Base):
    """One model run on one study generation."""

    __tablename__ = "jobs"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    route_name: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(128))
    # Series of the study this job runs on (the series its route matched).
    series_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Where results go: peer names, resolved when the job is created (reply_to_sender too).
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Named not_before in the database by the versions before LeasedWork.
    next_attempt_at: Mapped[datetime] = mapped_column("not_before", UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Seconds per phase of the last run (load, model, results, ...), for status and benchmarks.
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # "shadow" when every route gave the model in shadow: results kept, only
    # shadow_destinations get them (`dicom-node results` reviews them).
    mode: Mapped[str] = mapped_column(String(8), default="live", server_default="live")
    # What the model found per series (labels, probabilities, volumes, result files; no
    # pixels), written with the DONE state (`dicom_node.work.findings`).
    findings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    # A later step of a chained route (`dicom_node.work.chain`): its name in the route
    # (route_name), and the job of the step it runs after ("" and 0 for jobs routing
    # made). A step after a select step has one job per job of that step (per model).
    step: Mapped[str] = mapped_column(String(128), default="", server_default="")
    upstream_job_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        # Databases made before chained models keep (study_id, generation, model_name).
        UniqueConstraint(
            "study_id",
            "generation",
            "model_name",
            "route_name",
            "step",
            "upstream_job_id",
            name="uq_job_study_model_step",
        ),
        Index("ix_jobs_claim", "state", "not_before"),
        # The audit trail, outbox folders and `retry --job` name jobs by id: SQLite must
        # not give a forgotten job's id to a new one once retention empties the table.
        {"sqlite_autoincrement": True},
    )


class Delivery(LeasedWork, Base):
    """One result object to one destination."""

    __tablename__ = "deliveries"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    peer_name: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Permanent failures since it was queued: the first is retried once, the second fails it.
    permanent_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    commitment_transaction_uid: Mapped[str | None] = mapped_column(UID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "peer_name", name="uq_delivery_object_peer"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )


class Notification(LeasedWork, Base):
    """One announcement of a job's results to one ``[[notifications]]`` entry (a webhook
    or a FHIR server), sent once the job's deliveries are all done.

    ``idempotency_key`` goes with every try of the same announcement, so that a receiver
    that got a try whose answer was lost drops the repeat; a job run again gets a new one.
    ``queued_at`` orders the announcements of a study to one target: a later one waits
    for the earlier.
    """

    __tablename__ = "notifications"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    target: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The HTTP status of the last answer (None: no answer, or not tried yet).
    last_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    permanent_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "target", name="uq_notification_job_target"),
        Index("ix_notifications_due", "state", "next_attempt_at"),
        Index("ix_notifications_order", "study_id", "target", "queued_at"),
    )


class BackfillState(enum.StrEnum):
    """Where a study found by ``dicom-node backfill`` is; a rerun resumes from here."""

    FOUND = "found"  # in the archive's answer; nothing fetched yet
    RETRIEVING = "retrieving"  # C-GET/C-MOVE started (a killed run resumes it)
    ROUTED = "routed"  # complete with the archive's counts, routed into jobs: done
    PRESENT = "present"  # already in the node, received normally: not fetched, done
    NO_MATCH = "no_match"  # no series matches a route: not fetched (asked again next run)
    FAILED = "failed"  # retrieval incomplete or refused: retried by the next run


class BackfillStudy(Base):
    """One study a backfill found in an archive: what was fetched of it, and whether it
    was routed. The rows make a backfill resumable and a rerun free of duplicates."""

    __tablename__ = "backfill_studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    peer_name: Mapped[str] = mapped_column(String(128))
    study_date: Mapped[str | None] = mapped_column(String(8))
    modalities: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[BackfillState] = mapped_column(
        _enum(BackfillState, "backfill_state"), default=BackfillState.FOUND
    )
    # The series fetched (those some route matches), and the archive's instance count
    # for them; the count the node held when the study was completed.
    series_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    retrieved_instances: Mapped[int] = mapped_column(Integer, default=0)
    failed_suboperations: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    found_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
