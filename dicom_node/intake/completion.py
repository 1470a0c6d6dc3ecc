"""Deciding when a study is complete, from the database alone.

A scheduler job calls :meth:`CompletionScanner.scan` every
``completion.scan_interval_seconds``. It looks at studies in RECEIVING and completes
those that qualify, so a restart neither loses nor repeats a decision, and a study
whose quiet time passed while the node was down completes on the first scan.

Two rules:

* quiet timer: complete after ``stable_seconds`` without a new instance;
* evidence (when ``query_peer`` is set): after ``min_seconds`` of quiet, ask the peer
  by C-FIND (QIDO-RS for a DICOMweb peer) how many instances it holds of the study and
  of each series; complete as soon as we hold them all, or give up after
  ``max_seconds`` of quiet with some missing. When the peer gives no counts
  (unreachable, study unknown) the quiet timer decides.

The state change is a conditional UPDATE (still RECEIVING, no instance since we
looked), so a concurrently arriving instance or a second scanner never loses a race.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.config import CompletionSection
from dicom_node.db.schema import Series, Study, StudyState, utcnow
from dicom_node.errors import PeerError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyCounts:
    """What a peer says it holds of a study: instances in all, and per series UID."""

    instances: int | None
    series: dict[str, int] = field(default_factory=dict)


# counts(study_uids) -> {uid: StudyCounts}; raises PeerError when the peer cannot answer.
CountSource = Callable[[Sequence[str]], dict[str, StudyCounts]]


@dataclass(frozen=True)
class Decision:
    """A study the scan completed, and why."""

    study_instance_uid: str
    reason: str


@dataclass(frozen=True)
class _Receiving:
    id: int
    uid: str
    instances: int
    last_received_at: datetime
    quiet: float


@dataclass(frozen=True)
class _Evidence:
    """What the query peer's counts say about one study."""

    expected: int  # instances the peer holds of the study
    series_complete: bool  # we hold at least the peer's count of each of its series


def _seconds(value: float) -> str:
    return f"{value:g} s"


class CompletionScanner:
    """Completes studies by the quiet timer and, with a count source, by the peer's counts.

    Parameters
    ----------
    sessions
        Database sessions.
    settings
        The ``[completion]`` section.
    counts
        ``counts(study_uids) -> {uid: StudyCounts}``, usually
        ``functools.partial(scu.find_study_counts, local, peer)`` (or
        `dicom_node.net.dicomweb_query`'s); None for the quiet timer only. It may raise
        :class:`~dicom_node.errors.PeerError`.
    evidence
        How the counts are obtained, for the completion reason ("C-FIND", "QIDO-RS").
    clock
        Current UTC time (tests pass a fake one).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: CompletionSection,
        counts: CountSource | None = None,
        clock: Callable[[], datetime] = utcnow,
        evidence: str = "C-FIND",
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.counts = counts
        self.clock = clock
        self.evidence = evidence

    def scan(self) -> list[Decision]:
        """Complete every receiving study that qualifies now; the decisions taken."""
        now = self.clock()
        with self.sessions() as session:
            rows = session.execute(
                select(
                    Study.id, Study.study_instance_uid, Study.instance_count, Study.last_received_at
                )
                .where(Study.state == StudyState.RECEIVING)
                .order_by(Study.last_received_at)
            ).all()
        studies = [
            _Receiving(
                r.id,
                r.study_instance_uid,
                r.instance_count,
                r.last_received_at,
                (now - r.last_received_at).total_seconds(),
            )
            for r in rows
        ]
        decisions: list[Decision] = []
        evidence = self._evidence(studies)
        for study in studies:
            reason = self._reason(study, evidence.get(study.uid))
            if reason is not None and self._complete(study, reason, now):
                decisions.append(Decision(study.uid, reason))
        return decisions

    def _evidence(self, studies: list[_Receiving]) -> dict[str, _Evidence]:
        """The peer's counts against ours, for studies quiet for min_seconds; the expected
        instance counts are kept on the studies (``status`` shows them)."""
        if self.counts is None:
            return {}
        asked = [s for s in studies if s.quiet >= self.settings.min_seconds]
        if not asked:
            return {}
        try:
            theirs = self.counts([s.uid for s in asked])
        except PeerError as exc:
            logger.warning("completion: no counts from the query peer", extra={"error": exc.reason})
            return {}
        evidence = {}
        with self.sessions.begin() as session:
            for study in asked:
                counts = theirs.get(study.uid)
                if counts is None:
                    continue
                rows = session.execute(
                    select(Series.series_instance_uid, Series.instance_count).where(
                        Series.study_id == study.id
                    )
                )
                ours = {uid: count for uid, count in rows}
                expected = (
                    counts.instances
                    if counts.instances is not None
                    else sum(counts.series.values())
                )
                complete = all(ours.get(uid, 0) >= n for uid, n in counts.series.items())
                evidence[study.uid] = _Evidence(expected, complete)
                session.execute(
                    update(Study)
                    .where(Study.id == study.id, Study.state == StudyState.RECEIVING)
                    .values(expected_instances=expected)
                )
        return evidence

    def _reason(self, study: _Receiving, evidence: _Evidence | None) -> str | None:
        """Why ``study`` is complete now, or None while it is not."""
        settings = self.settings
        if evidence is None:
            if study.quiet >= settings.stable_seconds:
                return f"quiet for {_seconds(settings.stable_seconds)}"
            return None
        expected = evidence.expected
        if study.instances >= expected and evidence.series_complete:
            return f"{self.evidence} counts match {study.instances}/{expected}"
        if study.quiet >= settings.max_seconds:
            waited = _seconds(settings.max_seconds)
            return f"gave up waiting after {waited}: {study.instances}/{expected}"
        logger.debug(
            "completion: instances missing",
            extra={"study_uid": study.uid, "have": study.instances, "expected": expected},
        )
        return None

    def _complete(self, study: _Receiving, reason: str, now: datetime) -> bool:
        with self.sessions.begin() as session:
            done = mark_complete(session, study.id, reason, now, study.last_received_at)
        if done:
            announce_complete(study.uid, study.instances, reason)
        return done


def mark_complete(
    session: Session,
    study_id: int,
    reason: str,
    now: datetime,
    last_received_at: datetime | None = None,
) -> bool:
    """RECEIVING -> COMPLETE in the caller's transaction; False when the study is no longer
    receiving (or, with ``last_received_at``, received an instance since it was read).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    conditions = [Study.id == study_id, Study.state == StudyState.RECEIVING]
    if last_received_at is not None:
        conditions.append(Study.last_received_at == last_received_at)
    result = session.execute(
        update(Study)
        .where(*conditions)
        .values(state=StudyState.COMPLETE, completed_at=now, completion_reason=reason)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def announce_complete(study_uid: str, instances: int, reason: str) -> None:
    """The log and audit lines of a study completed (once its transaction is committed)."""
    logger.info(
        "study complete",
        extra={"study_uid": study_uid, "instances": instances, "reason": reason},
    )
    audit(AuditEvent.STUDY_COMPLETED, study_uid=study_uid, instances=instances, reason=reason)
