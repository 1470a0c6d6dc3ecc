"""Recording received instances in the database: Study, Series and Instance rows.

One transaction per instance, committed before the listener answers Success. An
instance for a study that is no longer receiving re-opens it: the state goes back to
RECEIVING and ``generation`` is bumped, so that routing creates the next generation of
jobs for it once it completes again.

This runs once per received instance, on the path every sender waits on, so it uses
SQLAlchemy Core statements built once, on the session's connection, rather than the
ORM's unit of work: in the common case (a study still receiving, a series already
known, a new instance) it is one SELECT, two UPDATE ... RETURNING and one INSERT.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, Update, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Base, Instance, Series, Study, StudyState
from dicom_node.intake.headers import InstanceHeaders

logger = logging.getLogger(__name__)

# Two associations may create the same study or series at once; the loser retries.
_INSERT_ATTEMPTS = 3


class RecordOutcome(enum.StrEnum):
    """What `record_instance` did to the catalog."""

    NEW = "new"
    REPLACED = "replaced"
    KEPT = "kept"  # recorded before, and the policy keeps the first: nothing changed


@dataclass(frozen=True)
class RecordResult:
    """What `record_instance` returns: its outcome, and the spool file a replaced row
    named before when that was another one (resent under other study/series UIDs): no
    row names it now, so the caller removes it once the transaction is committed."""

    outcome: RecordOutcome
    orphaned_path: str | None = None


@dataclass(frozen=True)
class ReceivedInstance:
    """An instance that is on disk in the spool, ready to be indexed."""

    headers: InstanceHeaders
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae_title: str | None
    received_at: datetime


def _cut(value: str | None, length: int) -> str | None:
    # PostgreSQL enforces VARCHAR lengths; a sender's over-long value must not fail a store.
    return value[:length] if value is not None else None


def find_instance_path(sessions: sessionmaker[Session], sop_instance_uid: str) -> str | None:
    """The spool path of an instance already recorded, or None."""
    with sessions() as session:
        return session.scalar(
            select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)
        )


def record_instance(
    sessions: sessionmaker[Session],
    received: ReceivedInstance,
    before_commit: Callable[[], None] | None = None,
    *,
    replace: bool = True,
) -> RecordResult:
    """Insert or update the rows for ``received`` in one committed transaction.

    An instance recorded before is updated to ``received`` when ``replace``, else left
    as it is (:attr:`RecordOutcome.KEPT`).

    ``before_commit`` runs after the statements and before the commit, inside the
    transaction: the listener waits there for the file's fsync, so that the disk work and
    the statements overlap while the row still becomes durable only after the file.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database cannot be written (after retrying a concurrent insert).
    Exception
        Whatever ``before_commit`` raises; the transaction is then rolled back.
    """
    for attempt in range(1, _INSERT_ATTEMPTS + 1):
        try:
            with sessions.begin() as session:
                recording = _record(session.connection(), received, replace)
                if before_commit is not None:
                    before_commit()
                return recording
        except IntegrityError:
            if attempt == _INSERT_ATTEMPTS:
                raise
            logger.debug("concurrent insert, retrying", extra={"attempt": attempt})
    raise AssertionError("unreachable")


def _values(*columns: str) -> dict[str, BindParameter[Any]]:
    return {column: bindparam(column) for column in columns}


# Built once: a statement built per call costs more than running it (SQLAlchemy derives
# a cache key from every new statement object). Parameters are bound by column name.
_FIND_INSTANCE = select(Instance.id, Instance.path, Instance.series_id, Instance.study_id).where(
    Instance.sop_instance_uid == bindparam("sop_instance_uid")
)
_STUDY = Base.metadata.tables[Study.__tablename__]
_SERIES = Base.metadata.tables[Series.__tablename__]
_INSTANCES = Base.metadata.tables[Instance.__tablename__]
_TOUCH_RECEIVING_STUDY = (
    update(_STUDY)
    .where(
        _STUDY.c.study_instance_uid == bindparam("uid"),
        _STUDY.c.state == StudyState.RECEIVING,
    )
    .values(
        last_received_at=bindparam("received_at"),
        instance_count=_STUDY.c.instance_count + bindparam("new"),
    )
    .returning(_STUDY.c.id)
)
_REOPEN_STUDY = (
    update(_STUDY)
    .where(_STUDY.c.study_instance_uid == bindparam("uid"))
    .values(
        state=StudyState.RECEIVING,
        generation=_STUDY.c.generation + 1,
        completed_at=None,
        completion_reason=None,
        expected_instances=None,
        last_received_at=bindparam("received_at"),
        instance_count=_STUDY.c.instance_count + bindparam("new"),
    )
    .returning(_STUDY.c.id, _STUDY.c.generation)
)
_INSERT_STUDY = (
    insert(_STUDY)
    .values(
        state=StudyState.RECEIVING,
        generation=0,
        **_values(
            "study_instance_uid",
            "patient_id",
            "patient_name",
            "accession_number",
            "study_date",
            "study_description",
            "calling_ae_title",
            "instance_count",
            "first_received_at",
            "last_received_at",
        ),
    )
    .returning(_STUDY.c.id)
)
_SERIES_ROUTING_FIELDS = select(_SERIES.c.headers).where(
    _SERIES.c.series_instance_uid == bindparam("uid")
)
_SET_SERIES_ROUTING_FIELDS = (
    update(_SERIES)
    .where(_SERIES.c.series_instance_uid == bindparam("uid"))
    .values(headers=bindparam("headers"))
)
_COUNT_SERIES = (
    update(_SERIES)
    .where(_SERIES.c.series_instance_uid == bindparam("uid"))
    .values(instance_count=_SERIES.c.instance_count + bindparam("new"))
    .returning(_SERIES.c.id)
)
_INSERT_SERIES = (
    insert(_SERIES)
    .values(
        **_values(
            "study_id",
            "series_instance_uid",
            "modality",
            "series_number",
            "series_description",
            "body_part_examined",
            "headers",
            "instance_count",
        )
    )
    .returning(_SERIES.c.id)
)
_COUNT_SERIES_BY_ID = (
    update(_SERIES)
    .where(_SERIES.c.id == bindparam("row_id"))
    .values(instance_count=_SERIES.c.instance_count + bindparam("delta"))
)
_COUNT_STUDY_BY_ID = (
    update(_STUDY)
    .where(_STUDY.c.id == bindparam("row_id"))
    .values(instance_count=_STUDY.c.instance_count + bindparam("delta"))
)
_INSTANCE_COLUMNS = (
    "series_id",
    "study_id",
    "sop_class_uid",
    "transfer_syntax_uid",
    "instance_number",
    "path",
    "size_bytes",
    "calling_ae_title",
    "received_at",
)
_INSERT_INSTANCE = insert(_INSTANCES).values(
    sop_instance_uid=bindparam("sop_instance_uid"), **_values(*_INSTANCE_COLUMNS)
)
_UPDATE_INSTANCE = (
    update(_INSTANCES)
    .where(_INSTANCES.c.id == bindparam("instance_id"))
    .values(**_values(*_INSTANCE_COLUMNS))
)


def _open_study(db: Connection, received: ReceivedInstance, new_instance: int) -> int:
    """The study's id, its counters and quiet timer updated; created or re-opened if need be."""
    h = received.headers
    touch = {"uid": h.study_instance_uid, "received_at": received.received_at, "new": new_instance}
    study_id = db.execute(_TOUCH_RECEIVING_STUDY, touch).scalar()
    if study_id is not None:
        return int(study_id)
    reopened = db.execute(_REOPEN_STUDY, touch).one_or_none()
    if reopened is not None:
        logger.info(
            "study re-opened by a new instance",
            extra={"study_uid": h.study_instance_uid, "generation": reopened.generation},
        )
        return int(reopened.id)
    created = db.execute(
        _INSERT_STUDY,
        {
            "study_instance_uid": h.study_instance_uid,
            "patient_id": _cut(h.patient_id, 64),
            "patient_name": _cut(h.patient_name, 324),
            "accession_number": _cut(h.accession_number, 64),
            "study_date": _cut(h.study_date, 8),
            "study_description": _cut(h.study_description, 64),
            "calling_ae_title": received.calling_ae_title,
            "instance_count": new_instance,
            "first_received_at": received.received_at,
            "last_received_at": received.received_at,
        },
    ).scalar_one()
    logger.info("study opened", extra={"study_uid": h.study_instance_uid})
    return int(created)


def _series_id(db: Connection, study_id: int, h: InstanceHeaders, new_instance: int) -> int:
    """The series' id, its count updated; created if need be. Header fields the series
    lacks are filled in from ``h`` (first values win)."""
    uid = h.series_instance_uid
    fields = h.routing_fields
    if fields:
        known = db.execute(_SERIES_ROUTING_FIELDS, {"uid": uid}).scalar()
        if known is not None and not fields.keys() <= known.keys():
            db.execute(_SET_SERIES_ROUTING_FIELDS, {"uid": uid, "headers": {**fields, **known}})
    series_id = db.execute(_COUNT_SERIES, {"uid": uid, "new": new_instance}).scalar()
    if series_id is not None:
        return int(series_id)
    created = db.execute(
        _INSERT_SERIES,
        {
            "study_id": study_id,
            "series_instance_uid": uid,
            "modality": _cut(h.modality, 16),
            "series_number": h.series_number,
            "series_description": _cut(h.series_description, 64),
            "body_part_examined": _cut(h.body_part_examined, 64),
            "headers": dict(h.routing_fields),
            "instance_count": new_instance,
        },
    ).scalar_one()
    return int(created)


def _record(db: Connection, received: ReceivedInstance, replace: bool) -> RecordResult:
    h = received.headers
    existing = db.execute(_FIND_INSTANCE, {"sop_instance_uid": h.sop_instance_uid}).one_or_none()
    if existing is not None and not replace:
        return RecordResult(RecordOutcome.KEPT)
    new_instance = int(existing is None)
    study_id = _open_study(db, received, new_instance)
    series_id = _series_id(db, study_id, h, new_instance)
    values = {
        "series_id": series_id,
        "study_id": study_id,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": received.transfer_syntax_uid,
        "instance_number": h.instance_number,
        "path": received.path,
        "size_bytes": received.size_bytes,
        "calling_ae_title": received.calling_ae_title,
        "received_at": received.received_at,
    }
    if existing is None:
        db.execute(_INSERT_INSTANCE, {"sop_instance_uid": h.sop_instance_uid, **values})
        return RecordResult(RecordOutcome.NEW)
    db.execute(_UPDATE_INSTANCE, {"instance_id": existing.id, **values})
    # Resent under other study/series UIDs, it moves, and so do the counts that
    # completion compares with the archive's.
    _move_count(db, _COUNT_SERIES_BY_ID, existing.series_id, series_id)
    _move_count(db, _COUNT_STUDY_BY_ID, existing.study_id, study_id)
    return RecordResult(
        RecordOutcome.REPLACED, existing.path if existing.path != received.path else None
    )


def _move_count(db: Connection, statement: Update, old_id: int, new_id: int) -> None:
    if old_id != new_id:
        db.execute(statement, [{"row_id": old_id, "delta": -1}, {"row_id": new_id, "delta": 1}])
