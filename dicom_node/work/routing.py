"""Turn complete studies into jobs: evaluate ``[[routes]]`` on the database rows.

The scheduler calls :func:`route_complete_studies` every scan. For each study that
completion marked COMPLETE, the series facts (study and series rows, the stored
``Series.routing_fields``, the SOP classes and calling AE titles of the instances) are matched
against every route, never by re-reading pixel files. Each model that some route picks
gets one job per (study, generation) with the union of the series and destinations of
the routes that named it; a study no route matches is marked SKIPPED with the reason.

The study is claimed with a guarded ``UPDATE ... WHERE state = 'complete' AND
generation = g`` as the first statement of the transaction, so that two schedulers
never route it twice and a study re-opened by the listener meanwhile is left alone
(the listener's update waits for, or wins over, this transaction).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig, PeerConfig, RouteConfig
from dicom_node.db.schema import Instance, Job, Series, Study, StudyState, WorkState, utcnow
from dicom_node.intake.headers import SERIES_KEYWORDS, STUDY_KEYWORDS
from dicom_node.metrics import STUDIES_COMPLETED
from dicom_node.work.route_match import Facts, route_matches, split_values

logger = logging.getLogger(__name__)


@dataclass
class JobPlan:
    """What one model will run on: the series and destinations its routes gave it."""

    model_name: str
    route_names: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # True while every route that gave the model runs it in shadow.
    shadow: bool = True


@dataclass(frozen=True)
class RoutingPlan:
    """The jobs a study gets, or the reason it gets none."""

    jobs: list[JobPlan]
    reason: str


def _add_unique(items: list[str], new: Sequence[str]) -> None:
    items.extend(item for item in new if item not in items)


def resolve_destinations(
    route: RouteConfig, config: NodeConfig, calling_ae: str | None
) -> tuple[list[str], str | None]:
    """Peer names for a route's results, and a problem when ``reply_to_sender`` finds none."""
    names = list(route.destinations)
    if not route.reply_to_sender:
        return names, None
    senders = [
        peer.name
        for peer in config.peers
        if isinstance(peer, PeerConfig) and peer.ae_title == (calling_ae or "")
    ]
    if not senders:
        return names, (
            f"route {route.name!r}: reply_to_sender, but no peer has the calling "
            f"AE title {calling_ae!r}"
        )
    _add_unique(names, senders[:1])
    return names, None


def plan_routing(
    config: NodeConfig, series_facts: dict[str, Facts], calling_ae: str | None
) -> RoutingPlan:
    """Match every route against every series of a study (pure: no database).

    Returns the job plans in config order of their models' first route, or no plans and
    the reason for each route that did not match, for the study's ``routing_reason``.
    """
    plans: dict[str, JobPlan] = {}
    misses: list[str] = []
    for route in config.routes:
        matched: list[str] = []
        route_misses: list[str] = []
        for series_uid, facts in series_facts.items():
            result = route_matches(route, facts)
            if result.matched:
                matched.append(series_uid)
            else:
                route_misses.append(f"series {series_uid}: {result.reason}")
        if not matched:
            misses.append(f"route {route.name!r}: " + ("; ".join(route_misses) or "no series"))
            continue
        live_destinations, problem = resolve_destinations(route, config, calling_ae)
        for model_name in route.entry_models():
            plan = plans.setdefault(model_name, JobPlan(model_name))
            _add_unique(plan.route_names, [route.name])
            _add_unique(plan.series_uids, matched)
            if route.is_shadow(model_name):
                _add_unique(plan.destinations, route.shadow_destinations)
                continue
            plan.shadow = False
            _add_unique(plan.destinations, live_destinations)
            if problem:
                plan.problems.append(problem)
    if not plans:
        reason = "no route matched: " + (" | ".join(misses) if misses else "no routes configured")
        return RoutingPlan([], reason)
    summary = ", ".join(
        f"{p.model_name}{' [shadow]' if p.shadow else ''} "
        f"({'+'.join(p.route_names)}: {len(p.series_uids)} series)"
        for p in plans.values()
    )
    return RoutingPlan(list(plans.values()), f"jobs: {summary}")


# Keywords study_facts fills from the rows, besides what the listener keeps in headers.
ROW_KEYWORDS = frozenset(
    {
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "AccessionNumber",
        "StudyDate",
        "StudyDescription",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SOPClassUID",
        "CallingAETitle",
    }
)
MATCHABLE_KEYWORDS = ROW_KEYWORDS | set(STUDY_KEYWORDS) | set(SERIES_KEYWORDS)


def unmatchable_conditions(config: NodeConfig) -> list[tuple[str, str]]:
    """``(key path, message)`` for each ``match`` keyword the index does not keep.

    Such a condition can never hold (routing never re-reads files), so the route
    never matches: worth a warning at start-up and in ``check-config``.
    """
    return [
        (
            f"routes[{index}].match.{keyword}",
            "not kept by the listener's index, so this route never matches "
            f"(matchable: {', '.join(sorted(MATCHABLE_KEYWORDS))})",
        )
        for index, route in enumerate(config.routes)
        for keyword in route.match
        if keyword not in MATCHABLE_KEYWORDS
    ]


def study_facts(session: Session, study: Study) -> dict[str, Facts]:
    """Facts per series UID, from the rows only (see `dicom_node.work.route_match`).
    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    study_level = {
        "StudyInstanceUID": study.study_instance_uid,
        "PatientID": study.patient_id,
        "PatientName": study.patient_name,
        "AccessionNumber": study.accession_number,
        "StudyDate": study.study_date,
        "StudyDescription": study.study_description,
    }
    facts: dict[str, Facts] = {}
    series_rows = session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.id)
    ).all()
    for series in series_rows:
        values: dict[str, list[str]] = {k: split_values(v) for k, v in study_level.items()}
        values.update(
            {
                "SeriesInstanceUID": [series.series_instance_uid],
                "Modality": split_values(series.modality),
                "SeriesNumber": split_values(
                    None if series.series_number is None else str(series.series_number)
                ),
                "SeriesDescription": split_values(series.series_description),
                "BodyPartExamined": split_values(series.body_part_examined),
            }
        )
        for keyword, text in (series.routing_fields or {}).items():
            values[keyword] = split_values(text)
        rows = session.execute(
            select(Instance.sop_class_uid, Instance.calling_ae_title)
            .where(Instance.series_id == series.id)
            .distinct()
        ).all()
        sop_classes = sorted({row.sop_class_uid for row in rows})
        values["SOPClassUID"] = sop_classes + [UID(uid).name for uid in sop_classes]
        calling = {row.calling_ae_title for row in rows if row.calling_ae_title}
        if study.calling_ae_title:
            calling.add(study.calling_ae_title)
        values["CallingAETitle"] = sorted(calling)
        facts[series.series_instance_uid] = values
    return facts


def route_study(session: Session, config: NodeConfig, study_id: int, generation: int) -> bool:
    """Create the jobs of one COMPLETE study in the caller's transaction.

    Returns False (and changes nothing) when the study is no longer COMPLETE at this
    generation: another scheduler routed it, or the listener re-opened it.
    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    claimed = session.execute(
        update(Study)
        .where(
            Study.id == study_id,
            Study.state == StudyState.COMPLETE,
            Study.generation == generation,
        )
        .values(state=StudyState.ROUTED)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    study = session.get_one(Study, study_id)
    plan = plan_routing(config, study_facts(session, study), study.calling_ae_title)
    superseded = session.execute(
        update(Job)
        .where(Job.study_id == study_id, Job.generation < generation, Job.state == WorkState.QUEUED)
        .values(state=WorkState.SKIPPED, error=f"superseded by generation {generation}")
    )
    now = utcnow()
    for job_plan in plan.jobs:
        problem = "; ".join(job_plan.problems) or None
        skipped = not job_plan.destinations and not job_plan.shadow
        session.add(
            Job(
                study_id=study_id,
                generation=generation,
                route_name="+".join(job_plan.route_names),
                model_name=job_plan.model_name,
                series_uids=job_plan.series_uids,
                destinations=job_plan.destinations,
                mode="shadow" if job_plan.shadow else "live",
                state=WorkState.SKIPPED if skipped else WorkState.QUEUED,
                error=f"no destination: {problem}" if skipped else problem,
                next_attempt_at=now,
                created_at=now,
            )
        )
    study.state = StudyState.ROUTED if plan.jobs else StudyState.SKIPPED
    study.routing_reason = plan.reason
    log = logger.info if plan.jobs else logger.warning
    log(
        "study routed" if plan.jobs else "study skipped",
        extra={
            "study_uid": study.study_instance_uid,
            "generation": generation,
            "jobs": len(plan.jobs),
            "superseded": superseded.rowcount,  # type: ignore[attr-defined]
            "reason": plan.reason,
        },
    )
    return True


def route_complete_studies(sessions: sessionmaker[Session], config: NodeConfig) -> int:
    """Route every COMPLETE study, one transaction each; returns how many were routed.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; studies routed before stay routed.
    """
    with sessions() as session:
        pending = session.execute(
            select(Study.id, Study.generation)
            .where(Study.state == StudyState.COMPLETE)
            .order_by(Study.completed_at, Study.id)
        ).all()
    routed = 0
    for study_id, generation in pending:
        with sessions.begin() as session:
            if route_study(session, config, study_id, generation):
                routed += 1
                STUDIES_COMPLETED.inc()
    return routed
