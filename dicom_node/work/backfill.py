"""Backfill: fetch past studies from the archive and run them through the routes as if
they had just been sent.

For each study the archive lists in the date range (C-FIND, study level), the series
some route wants are chosen on the archive's series-level answers
(`dicom_node.work.backfill_plan`), fetched by C-GET (stored by the listener's own
C-STORE handler in this process) or C-MOVE (stored by the running listener), and the
study is then completed with the archive's counts (no quiet timer) and routed into jobs
by the normal routing, in one transaction. A running node's workers then run the jobs.

Every step is recorded in ``backfill_studies`` (`dicom_node.db.schema.BackfillStudy`),
so that a run killed at any moment is resumed by the next one: a study routed before, or
received normally (its instances are all in the node already), is not fetched again; a
study cut off half-way has only its missing series fetched, and instances that arrive
twice are deduplicated by SOP Instance UID as the listener does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.config import DicomwebPeerConfig, NodeConfig, PeerConfig, RouteConfig
from dicom_node.db.schema import (
    BackfillState,
    BackfillStudy,
    Job,
    Series,
    Study,
    utcnow,
)
from dicom_node.errors import PeerError
from dicom_node.intake.completion import announce_complete, mark_complete
from dicom_node.intake.spool import Spool
from dicom_node.net.query_retrieve import FoundSeries, FoundStudy, QueryRetrieveError, Retrieval
from dicom_node.net.scp import StoreHandler
from dicom_node.work.backfill_archive import Archive, date_range, open_archive
from dicom_node.work.backfill_pace import StudyPacer
from dicom_node.work.backfill_plan import StudyPlan, plan_study, query_keywords
from dicom_node.work.routing import route_study

logger = logging.getLogger(__name__)

# A study in these states needs nothing more from a backfill.
DONE_STATES = frozenset({BackfillState.ROUTED, BackfillState.PRESENT})


@dataclass(frozen=True)
class BackfillRequest:
    """What to backfill: from which peer, which study dates and modality, for which
    routes (None: all), at most how many retrievals, how fast."""

    peer: PeerConfig | DicomwebPeerConfig
    since: date
    until: date | None = None
    modality: str | None = None
    route: str | None = None
    limit: int | None = None
    rate_per_minute: float | None = None
    dry_run: bool = False

    @property
    def study_dates(self) -> str:
        """The StudyDate range, as a DICOM range matching key (for logs and audit)."""
        return date_range(self.since, self.until)


@dataclass
class BackfillSummary:
    """What a run did, study by study counted once."""

    found: int = 0
    done_before: int = 0  # routed or present in an earlier run
    present: int = 0  # received normally: not fetched
    no_match: int = 0  # no series any route wants
    # --dry-run: the studies that would be fetched, one line each
    would_retrieve: list[str] = field(default_factory=list)
    retrieved: int = 0  # fetched in this run
    routed: int = 0  # completed and routed in this run
    jobs: int = 0
    instances: int = 0  # instances the node held of the studies it completed
    not_reached: int = 0  # left for the next run by --limit
    failed: dict[str, str] = field(default_factory=dict)  # study UID -> reason

    def as_dict(self) -> dict[str, Any]:
        """The counts (and failures) for the audit line and ``--json``."""
        return {
            "found": self.found,
            "done_before": self.done_before,
            "present": self.present,
            "no_match": self.no_match,
            "would_retrieve": len(self.would_retrieve),
            "retrieved": self.retrieved,
            "routed": self.routed,
            "jobs": self.jobs,
            "instances": self.instances,
            "not_reached": self.not_reached,
            "failed": dict(self.failed),
        }


class IncompleteRetrieval(Exception):
    """The node holds fewer instances of the wanted series than the archive listed."""


class Backfill:
    """One backfill run: :meth:`find` the studies, then :meth:`process` them.

    Parameters
    ----------
    config
        The node config (routes, database, spool, our AE title).
    sessions
        Database sessions.
    spool
        Where a C-GET stores the instances (the listener's layout).
    request
        What to backfill.
    pacer
        Spaces retrievals (default: from ``request.rate_per_minute``).
    archive
        Where studies come from (default: the request's peer, by what it speaks).

    Raises
    ------
    ValueError
        When ``request.route`` names no route of the config.
    """

    def __init__(
        self,
        config: NodeConfig,
        sessions: sessionmaker[Session],
        spool: Spool,
        request: BackfillRequest,
        pacer: StudyPacer | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.request = request
        self.routes = _routes(config, request.route)
        # Routing sees only the chosen route, as if the others were not configured.
        self.routing_config = config.model_copy(update={"routes": self.routes})
        self.pacer = pacer or StudyPacer(request.rate_per_minute)
        self.handler = StoreHandler(config, sessions, spool)
        self.archive: Archive = archive or open_archive(config, request.peer, self.handler)
        self.keywords = query_keywords(self.routes)
        self.summary = BackfillSummary()

    @property
    def method(self) -> str:
        """How studies are fetched: C-GET, C-MOVE or WADO-RS."""
        return self.archive.method

    def find(self) -> list[FoundStudy]:
        """The studies the archive holds in the range (oldest first).

        Raises
        ------
        QueryRetrieveError
            When the archive refuses the C-FIND (with what to configure there).
        PeerError
            When the archive cannot be reached (or a DICOMweb peer answers an error).
        """
        request = self.request
        studies = self.archive.find_studies(
            request.since, request.until, request.modality, self.keywords.study
        )
        self.summary.found = len(studies)
        logger.info(
            "backfill: studies found",
            extra={"peer": request.peer.name, "dates": request.study_dates, "found": len(studies)},
        )
        return studies

    def process(
        self, studies: Sequence[FoundStudy], progress: Callable[[str], None] | None = None
    ) -> BackfillSummary:
        """Fetch, complete and route each study that needs it; ``progress(study_uid)``
        after each. A refusal by the archive stops the run (the study is recorded as
        failed, with the reason); a lost association fails that study only.

        Raises
        ------
        QueryRetrieveError
            When the archive refuses a C-FIND, C-GET or C-MOVE.
        sqlalchemy.exc.SQLAlchemyError
            When the database fails.
        """
        request = self.request
        audit(
            AuditEvent.BACKFILL_RUN,
            peer=request.peer.name,
            dates=request.study_dates,
            modality=request.modality,
            route=request.route,
            method=self.method,
            dry_run=request.dry_run,
            phase="started",
            found=self.summary.found,
        )
        try:
            for study in studies:
                if request.limit is not None and self.summary.retrieved >= request.limit:
                    self.summary.not_reached += 1
                    continue
                try:
                    self._one(study)
                except QueryRetrieveError as exc:
                    self._failed(study.study_instance_uid, exc.reason, study)
                    raise
                except PeerError as exc:  # unreachable or dropped: this study only
                    self._failed(study.study_instance_uid, str(exc), study)
                if progress is not None:
                    progress(study.study_instance_uid)
        finally:
            audit(
                AuditEvent.BACKFILL_RUN,
                peer=request.peer.name,
                phase="ended",
                **self.summary.as_dict(),
            )
        return self.summary

    def _one(self, study: FoundStudy) -> None:
        uid = study.study_instance_uid
        row = self._row(uid)
        if row is not None and row.state in DONE_STATES:
            self.summary.done_before += 1
            return
        series = self.archive.find_series(uid, self.keywords.series)
        plan = plan_study(self.routes, study, series, self.archive.sender_aet)
        if not plan.series:
            self.summary.no_match += 1
            logger.info(
                "backfill: study not wanted", extra={"study_uid": uid, "reason": plan.reason}
            )
            self._save(study, BackfillState.NO_MATCH, reason=plan.reason)
            return
        missing = self._missing(plan)
        if not missing and (row is None or row.attempts == 0):
            # Received normally: the node completes and routes it on its own.
            self.summary.present += 1
            self._save(study, BackfillState.PRESENT, plan=plan, reason="already in the node")
            return
        if self.request.dry_run:
            if missing:
                self.summary.would_retrieve.append(_described(study, plan, missing))
            return
        if missing:
            self._retrieve(study, plan, missing)
            self.summary.retrieved += 1
        try:
            self._complete_and_route(study, plan)
        except IncompleteRetrieval as exc:
            self._failed(uid, str(exc), study, plan)

    def _missing(self, plan: StudyPlan) -> list[FoundSeries]:
        """The wanted series of which the node holds fewer instances than the archive
        (or none, when the archive gives no count)."""
        held = self._held(plan.study.study_instance_uid)
        return [
            s
            for s in plan.series
            if held.get(s.series_instance_uid, 0) < (s.instances if s.instances is not None else 1)
        ]

    def _held(self, study_uid: str) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(
                select(Series.series_instance_uid, Series.instance_count)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid)
            ).all()
        return {uid: count for uid, count in rows}

    def _retrieve(self, study: FoundStudy, plan: StudyPlan, missing: list[FoundSeries]) -> None:
        uid = study.study_instance_uid
        waited = self.pacer.wait()
        row = self._save(study, BackfillState.RETRIEVING, plan=plan, reason=None, attempt=True)
        peer = self.request.peer
        whole = plan.whole_study and len(missing) == len(plan.series)
        series_uids = None if whole else [s.series_instance_uid for s in missing]
        logger.info(
            "backfill: retrieving",
            extra={
                "study_uid": uid,
                "method": self.method,
                "series": len(missing),
                "expected": plan.expected_instances,
                "attempt": row.attempts,
                "paced_seconds": round(waited, 3),
            },
        )
        retrieval: Retrieval | None = None
        try:
            retrieval = self.archive.retrieve(study, series_uids)
        finally:
            audit(
                AuditEvent.BACKFILL_RETRIEVED,
                study_uid=uid,
                peer=peer.name,
                method=self.method,
                series_uids=[s.series_instance_uid for s in missing],
                expected=plan.expected_instances,
                completed=retrieval.completed if retrieval else None,
                failed=retrieval.failed if retrieval else None,
                warning=retrieval.warning if retrieval else None,
                statuses=[f"0x{code:04X}" for code in retrieval.statuses] if retrieval else None,
                outcome="answered" if retrieval else "refused or cut off",
            )
        self._save(
            study,
            BackfillState.RETRIEVING,
            failed_suboperations=retrieval.failed,
            reason=_sub_operations(retrieval) if retrieval.failed else None,
        )

    def _complete_and_route(self, study: FoundStudy, plan: StudyPlan) -> None:
        """Complete the study with the archive's counts and route it, in one transaction
        (so that a running node's scheduler never routes it in between).

        Raises
        ------
        IncompleteRetrieval
            When the node holds fewer instances of a wanted series than the archive.
        """
        uid = study.study_instance_uid
        held = self._held(uid)
        short = [
            f"series {s.series_instance_uid}: {held.get(s.series_instance_uid, 0)} of "
            f"{s.instances if s.instances is not None else 'some'}"
            for s in self._missing(plan)
        ]
        if short:
            row = self._row(uid)
            detail = f" ({row.reason})" if row is not None and row.reason else ""
            raise IncompleteRetrieval(
                "instances missing after retrieval: " + "; ".join(short) + detail
            )
        have = sum(held.get(s.series_instance_uid, 0) for s in plan.series)
        expected = plan.expected_instances
        reason = f"backfill: {self.method} of {peer_counts(have, expected)}"
        now = utcnow()
        with self.sessions.begin() as session:
            found = session.execute(
                select(Study.id, Study.generation, Study.instance_count).where(
                    Study.study_instance_uid == uid
                )
            ).one()
            completed = mark_complete(session, found.id, reason, now)
            routed = route_study(session, self.routing_config, found.id, found.generation)
            jobs = session.scalar(
                select(func.count(Job.id)).where(
                    Job.study_id == found.id, Job.generation == found.generation
                )
            )
            routing = session.scalar(select(Study.routing_reason).where(Study.id == found.id))
        if completed:
            announce_complete(uid, found.instance_count, reason)
        self.summary.routed += 1
        self.summary.instances += found.instance_count
        if routed:
            self.summary.jobs += jobs or 0
        by = "this backfill" if routed else "the node"
        self._save(
            study,
            BackfillState.ROUTED,
            plan=plan,
            retrieved_instances=have,
            reason=f"routed by {by}: {routing}",
        )

    def _failed(
        self, uid: str, reason: str, study: FoundStudy | None = None, plan: StudyPlan | None = None
    ) -> None:
        self.summary.failed[uid] = reason
        logger.warning("backfill: study failed", extra={"study_uid": uid, "reason": reason})
        if not self.request.dry_run:
            self._save(study or FoundStudy(uid, {}), BackfillState.FAILED, plan=plan, reason=reason)

    def _row(self, uid: str) -> BackfillStudy | None:
        with self.sessions() as session:
            return session.scalar(
                select(BackfillStudy).where(BackfillStudy.study_instance_uid == uid)
            )

    def _save(
        self,
        study: FoundStudy,
        state: BackfillState,
        plan: StudyPlan | None = None,
        attempt: bool = False,
        **values: Any,
    ) -> BackfillStudy:
        """Create or update the study's row (nothing is written by a dry run)."""
        uid = study.study_instance_uid
        if self.request.dry_run:
            return BackfillStudy(study_instance_uid=uid, state=state, attempts=0)
        with self.sessions.begin() as session:
            row = session.scalar(
                select(BackfillStudy).where(BackfillStudy.study_instance_uid == uid)
            )
            if row is None:
                row = BackfillStudy(study_instance_uid=uid, attempts=0)
                session.add(row)
            row.peer_name = self.request.peer.name
            row.state = state
            if study.values:
                row.study_date = study.values.get("StudyDate")
                row.modalities = (study.values.get("ModalitiesInStudy") or "")[:64] or None
            if plan is not None:
                row.series_uids = [s.series_instance_uid for s in plan.series]
                row.expected_instances = plan.expected_instances
            if attempt:
                row.attempts += 1
            for key, value in values.items():
                setattr(row, key, value)
        return row


def backfill_section(session: Session, config: NodeConfig) -> dict[str, int]:
    """Studies found by backfills, by state (every state listed), for ``dicom-node status``."""
    rows = session.execute(select(BackfillStudy.state, func.count()).group_by(BackfillStudy.state))
    counts = {state: count for state, count in rows}
    return {state.value: int(counts.get(state, 0)) for state in BackfillState}


def _described(study: FoundStudy, plan: StudyPlan, missing: list[FoundSeries]) -> str:
    """A study a dry run would fetch, in one line."""
    expected = plan.expected_instances
    return (
        f"{study.study_instance_uid} {study.values.get('StudyDate', '')} "
        f"{study.values.get('ModalitiesInStudy', '')}: {len(missing)} series, "
        f"{expected if expected is not None else '?'} instances"
    )


def peer_counts(have: int, expected: int | None) -> str:
    """``5/5 instances`` (held / archive's count), or ``5 instances`` without a count."""
    return f"{have}/{expected} instances" if expected is not None else f"{have} instances"


def _sub_operations(retrieval: Retrieval) -> str:
    statuses = ", ".join(f"0x{code:04X}" for code in retrieval.statuses)
    failed = f"{retrieval.failed} sub-operation(s) failed"
    if retrieval.failed_uids:
        more = "..." if len(retrieval.failed_uids) > 5 else ""
        failed += f" ({', '.join(retrieval.failed_uids[:5])}{more})"
    return f"the archive answered {statuses}: {failed}"


def _routes(config: NodeConfig, name: str | None) -> list[RouteConfig]:
    if name is None:
        return list(config.routes)
    for route in config.routes:
        if route.name == name:
            return [route]
    known = ", ".join(r.name for r in config.routes) or "none configured"
    raise ValueError(f"no route named {name!r} (routes: {known})")
