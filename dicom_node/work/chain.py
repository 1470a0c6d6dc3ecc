"""Chained models: when a step's job ends, decide and create the jobs of the steps after it.

A route's ``steps`` (`dicom_node.config.StepConfig`) form a tree: the first steps run
when the route matches, like ``models``; each later step runs after the one step it
names. Every step is its own job row (retries, status, audit), created in the same
transaction that ends the job of the step before it, so that a crash never loses the
decision:

- the step before was DONE: per series it read, the later step's ``when`` must hold on
  its findings (`dicom_node.work.findings`), an ``input_mask`` label must have been
  found, and a ``select`` must map the classifier's label to a model; the step's job
  (one per selected model) runs on the series that passed, QUEUED; when none passed it
  is SKIPPED with each series' reason;
- the step before FAILED or was SKIPPED: the later step is SKIPPED, "not run", with
  the reason, and so is every step after it, so that ``status`` shows the whole chain.

Results go out per step, as each step's job finishes, like any job's: a finding gets
to the radiologist as soon as its model has run, and a later step that fails cannot
hold back the results of the steps before it. Each step's SR names its own model
(the observer device) and how it came to run (`chain_comments`); when a later step
fails, the report of the step it ran after is amended to say so
(`dicom_node.work.chain_report`).

A job that was re-run (``dicom-node retry``) decides again: the rows of the steps
after it that are finished are queued again (or skipped) with the new decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig, RouteConfig, StepCondition, StepConfig, StepSelect
from dicom_node.db.schema import Job, Study, WorkState, utcnow
from dicom_node.work.jobs import TERMINAL_STATES
from dicom_node.work.route_match import route_matches
from dicom_node.work.routing import resolve_destinations, study_facts

logger = logging.getLogger(__name__)

MODEL_NAME_LENGTH = 128


@dataclass(frozen=True)
class PlannedStep:
    """What becomes of one later step: its model and series, or why it does not run."""

    step: StepConfig
    after: str
    model_name: str
    series_uids: list[str]
    reason: str | None = None

    @property
    def runs(self) -> bool:
        """Whether the step's job is queued (else it is skipped with ``reason``)."""
        return bool(self.series_uids)


@dataclass(frozen=True)
class StepJob:
    """A later step's job row as created or updated, for the audit trail."""

    job_id: int
    route_name: str
    step: str
    model_name: str
    state: WorkState
    reason: str | None
    upstream_job_id: int


def _label(record: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((entry for entry in record.get("labels", []) if entry["label"] == label), None)


def _bound_reason(what: str, value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return f"has no {what}" if low is not None or high is not None else ""
    if low is not None and value < low:
        return f"{what} {value:g} is below {low:g}"
    if high is not None and value > high:
        return f"{what} {value:g} is above {high:g}"
    return ""


def condition_reason(condition: StepCondition, record: dict[str, Any]) -> str | None:
    """None when ``condition`` holds on one series' findings; why not otherwise."""
    entry = _label(record, condition.label)
    where = f"step {condition.step!r}"
    if entry is None:
        return f"{where} reports no label {condition.label!r}"
    bounded = condition.uses_probability() or condition.uses_volume()
    wanted = condition.present if condition.present is not None or bounded else True
    if wanted is not None and bool(entry.get("positive")) != wanted:
        return f"{where} {'did not find' if wanted else 'found'} {condition.label!r}"
    for what, key, low, high in (
        ("probability", "probability", condition.min_probability, condition.max_probability),
        ("volume (ml)", "volume_ml", condition.min_volume_ml, condition.max_volume_ml),
    ):
        reason = _bound_reason(what, entry.get(key), low, high)
        if reason:
            return f"{where}: {condition.label!r} {reason}"
    return None


def selected_model(choice: StepSelect, record: dict[str, Any]) -> tuple[str | None, str]:
    """The model a classifier's findings select for one series, and the label that did;
    ``(None, reason)`` when no positive label selects one. The most probable positive
    label decides."""
    positive = [entry for entry in record.get("labels", []) if entry.get("positive")]
    if not positive:
        return None, f"step {choice.step!r} found no label"
    best = max(positive, key=lambda entry: entry.get("probability") or 0.0)
    model = choice.models.get(best["label"])
    if model is None:
        return None, f"step {choice.step!r} labelled it {best['label']!r}, which selects no model"
    return model, best["label"]


def _series_model(step: StepConfig, record: dict[str, Any]) -> tuple[str | None, str]:
    """The model the step runs on one series, or None and why it does not."""
    if step.when is not None:
        reason = condition_reason(step.when, record)
        if reason is not None:
            return None, reason
    mask = step.mask()
    if mask is not None:
        entry = _label(record, mask[1])
        if entry is None or not entry.get("positive"):
            return None, f"step {mask[0]!r} found no {mask[1]!r} to restrict the input to"
    if step.select is not None:
        return selected_model(step.select, record)
    return step.model, ""


def _placeholder_model(step: StepConfig) -> str:
    """The model name of a step that does not run: its model, or its candidates."""
    return "|".join(step.candidate_models())[:MODEL_NAME_LENGTH]


def plan_after(
    route: RouteConfig,
    upstream: StepConfig,
    state: WorkState,
    findings: dict[str, Any],
    error: str | None,
) -> list[PlannedStep]:
    """What becomes of every step after ``upstream`` (pure: no database), parents first.

    Steps that do not run take the steps after them along, each "not run" with why.
    """
    planned: list[PlannedStep] = []
    for step in route.steps_after(upstream.step_name):
        if state == WorkState.DONE:
            entries = _plan_step(step, upstream.step_name, findings)
        else:
            verb = "failed" if state == WorkState.FAILED else "was skipped"
            reason = f"not run: step {upstream.step_name!r} {verb}: {error or 'no reason given'}"
            entries = [PlannedStep(step, upstream.step_name, _placeholder_model(step), [], reason)]
        planned.extend(entries)
        for entry in entries:
            if not entry.runs:
                planned.extend(plan_after(route, step, WorkState.SKIPPED, {}, entry.reason))
    return planned


def _plan_step(step: StepConfig, after: str, findings: dict[str, Any]) -> list[PlannedStep]:
    by_model: dict[str, list[str]] = {}
    reasons: list[str] = []
    for record in findings.get("series", []):
        model, reason = _series_model(step, record)
        if model is None:
            reasons.append(f"series {record.get('series_uid')}: {reason}")
        else:
            by_model.setdefault(model, []).append(record["series_uid"])
    note = "; ".join(reasons) or None
    if not by_model:
        return [PlannedStep(step, after, _placeholder_model(step), [], note or "no series")]
    return [PlannedStep(step, after, model, uids, note) for model, uids in by_model.items()]


def _matched_findings(session: Session, route: RouteConfig, job: Job) -> dict[str, Any]:
    """The job's findings on the series ``route`` matched: a first step's job may also
    run its model on series that only another route (naming the same model) gave it."""
    if job.step:
        return job.findings
    facts = study_facts(session, session.get_one(Study, job.study_id))
    matched = {uid for uid, values in facts.items() if route_matches(route, values).matched}
    series = [r for r in job.findings.get("series", []) if r.get("series_uid") in matched]
    return {**job.findings, "series": series}


def _upstream_step(route: RouteConfig, job: Job) -> StepConfig | None:
    return route.step_named(job.step) if job.step else route.first_step_of(job.model_name)


def advance_chain(session: Session, config: NodeConfig, job_id: int) -> list[StepJob]:
    """Create (or renew) the jobs of the steps after finished job ``job_id``, in the
    caller's transaction, which ends that job; the rows written, for the audit trail.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    job = session.get_one(Job, job_id)
    routes = {route.name: route for route in config.routes}
    written: list[StepJob] = []
    for route_name in job.route_name.split("+"):
        route = routes.get(route_name)
        upstream = None if route is None else _upstream_step(route, job)
        if route is None or upstream is None:
            continue  # not a chain, or the config changed since the job was made
        findings = _matched_findings(session, route, job)
        parents = {upstream.step_name: job.id}
        for planned in plan_after(route, upstream, job.state, findings, job.error):
            row = _write_step_job(session, config, job, route, planned, parents[planned.after])
            if row is not None:
                parents[planned.step.step_name] = row.job_id
                written.append(row)
    return written


def _write_step_job(
    session: Session,
    config: NodeConfig,
    upstream: Job,
    route: RouteConfig,
    planned: PlannedStep,
    upstream_job_id: int,
) -> StepJob | None:
    """Insert the step's job, or renew its finished row; None when it is queued or running."""
    study = session.get_one(Study, upstream.study_id)
    shadow = route.is_shadow(planned.model_name)
    destinations, problem = resolve_destinations(route, config, study.calling_ae_title)
    if shadow:
        destinations = list(route.shadow_destinations)
    state, reason = WorkState.QUEUED, planned.reason
    if not planned.runs:
        state = WorkState.SKIPPED
    elif not destinations and not shadow:
        state, reason = WorkState.SKIPPED, f"no destination: {problem}"
    values: dict[str, Any] = {
        "series_uids": planned.series_uids,
        "destinations": destinations,
        "mode": "shadow" if shadow else "live",
        "state": state,
        "error": reason,
        "upstream_job_id": upstream_job_id,
        "attempts": 0,
        "next_attempt_at": utcnow(),
        "finished_at": None if state == WorkState.QUEUED else utcnow(),
        "worker_id": None,
        "lease_expires_at": None,
        "findings": {},
        "timings": {},
    }
    row = session.scalar(
        select(Job).where(
            Job.study_id == upstream.study_id,
            Job.generation == upstream.generation,
            Job.model_name == planned.model_name,
            Job.route_name == route.name,
            Job.step == planned.step.step_name,
            Job.upstream_job_id == upstream_job_id,
        )
    )
    if row is not None and row.state not in TERMINAL_STATES:
        logger.warning("step job already active; left alone", extra={"job_id": row.id})
        return None
    if row is None:
        row = Job(
            study_id=upstream.study_id,
            generation=upstream.generation,
            route_name=route.name,
            model_name=planned.model_name,
            step=planned.step.step_name,
            created_at=utcnow(),
            **values,
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            # A database made before chained models keeps its jobs unique per (study,
            # generation, model): a second job of one step in a study does not fit.
            logger.error(
                "chain step job not created: the database predates chained models",
                extra={"upstream_job_id": upstream_job_id, "step": planned.step.step_name},
            )
            return None
    else:
        for key, value in values.items():
            setattr(row, key, value)
        session.flush()
    return StepJob(
        row.id,
        route.name,
        planned.step.step_name,
        planned.model_name,
        state,
        reason,
        upstream_job_id,
    )


def chain_comments(route: RouteConfig, step: StepConfig, upstream_model: str) -> list[str]:
    """What a later step's SR says about how it came to run: its route and step, the
    step (and model) it ran after, its condition, selection and input mask."""
    after = step.upstream or ""
    comments = [
        f"Chain {route.name!r}, step {step.step_name!r}: ran after step {after!r} "
        f"(model {upstream_model})"
    ]
    if step.when is not None:
        comments.append(f"Condition: {_condition_text(step.when)}")
    if step.select is not None:
        comments.append(f"Model selected by the label of step {step.select.step!r}")
    mask = step.mask()
    if mask is not None:
        comments.append(
            f"Input restricted to the {mask[1]!r} segment of step {mask[0]!r}: "
            "pixels outside it set to the series' lowest value"
        )
    return comments


def _condition_text(condition: StepCondition) -> str:
    parts = [f"{condition.label!r}"]
    if condition.present is not None:
        parts.append("present" if condition.present else "absent")
    for text, value in (
        ("probability >=", condition.min_probability),
        ("probability <=", condition.max_probability),
        ("volume (ml) >=", condition.min_volume_ml),
        ("volume (ml) <=", condition.max_volume_ml),
    ):
        if value is not None:
            parts.append(f"{text} {value:g}")
    if len(parts) == 1:
        parts.append("present")
    return " ".join(parts)
