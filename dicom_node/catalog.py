"""Recording received instances in the database: Study, Series and Instance rows.

One transaction per instance, committed before the listener answers Success. An
instance for a study that is no longer receiving re-opens it: the state goes back to
RECEIVING and ``generation`` is bumped, so that routing creates the next generation of
jobs for it once it completes again.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.headers import InstanceHeaders
from dicom_node.schema import Instance, Series, Study, StudyState

logger = logging.getLogger(__name__)

# Two associations may create the same study or series at once; the loser retries.
_INSERT_ATTEMPTS = 3


class Recorded(enum.StrEnum):
    """What recording an instance did."""

    NEW = "new"
    REPLACED = "replaced"


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


def record_instance(sessions: sessionmaker[Session], received: ReceivedInstance) -> Recorded:
    """Insert or update the rows for ``received`` in one committed transaction.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database cannot be written (after retrying a concurrent insert).
    """
    for attempt in range(1, _INSERT_ATTEMPTS + 1):
        try:
            with sessions.begin() as session:
                return _record(session, received)
        except IntegrityError:
            if attempt == _INSERT_ATTEMPTS:
                raise
            logger.debug("concurrent insert, retrying", extra={"attempt": attempt})
    raise AssertionError("unreachable")


def _study(session: Session, received: ReceivedInstance) -> Study:
    h = received.headers
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == h.study_instance_uid).with_for_update()
    ).one_or_none()
    if study is None:
        study = Study(
            study_instance_uid=h.study_instance_uid,
            patient_id=_cut(h.patient_id, 64),
            patient_name=_cut(h.patient_name, 324),
            accession_number=_cut(h.accession_number, 64),
            study_date=_cut(h.study_date, 8),
            study_description=_cut(h.study_description, 64),
            calling_ae_title=received.calling_ae_title,
            state=StudyState.RECEIVING,
            generation=0,
            instance_count=0,
            first_received_at=received.received_at,
            last_received_at=received.received_at,
        )
        session.add(study)
        session.flush()
        logger.info("study opened", extra={"study_uid": h.study_instance_uid})
    elif study.state != StudyState.RECEIVING:
        study.state = StudyState.RECEIVING
        study.generation += 1
        study.completed_at = None
        study.completion_reason = None
        study.expected_instances = None
        logger.info(
            "study re-opened by a new instance",
            extra={"study_uid": h.study_instance_uid, "generation": study.generation},
        )
    study.last_received_at = received.received_at
    return study


def _series(session: Session, study: Study, h: InstanceHeaders) -> Series:
    series = session.scalars(
        select(Series).where(Series.series_instance_uid == h.series_instance_uid)
    ).one_or_none()
    if series is None:
        series = Series(
            study_id=study.id,
            series_instance_uid=h.series_instance_uid,
            modality=_cut(h.modality, 16),
            series_number=h.series_number,
            series_description=_cut(h.series_description, 64),
            body_part_examined=_cut(h.body_part_examined, 64),
            headers=dict(h.headers),
            instance_count=0,
        )
        session.add(series)
        session.flush()
    elif not h.headers.keys() <= series.headers.keys():
        # Later instances fill in keywords the first one lacked; first values win.
        series.headers = {**h.headers, **series.headers}
    return series


def _record(session: Session, received: ReceivedInstance) -> Recorded:
    h = received.headers
    study = _study(session, received)
    series = _series(session, study, h)
    instance = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == h.sop_instance_uid)
    ).one_or_none()
    outcome = Recorded.REPLACED
    if instance is None:
        instance = Instance(sop_instance_uid=h.sop_instance_uid)
        session.add(instance)
        study.instance_count += 1
        series.instance_count += 1
        outcome = Recorded.NEW
    instance.series_id = series.id
    instance.study_id = study.id
    instance.sop_class_uid = h.sop_class_uid
    instance.transfer_syntax_uid = received.transfer_syntax_uid
    instance.instance_number = h.instance_number
    instance.path = received.path
    instance.size_bytes = received.size_bytes
    instance.calling_ae_title = received.calling_ae_title
    instance.received_at = received.received_at
    return outcome
