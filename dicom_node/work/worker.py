"""Inference workers: claim a job, run its model on its series, queue the results.

One job, one pass: read the series' instances from the spool (pydicom, headers and
pixel data as stored; decoding happens inside ``Model.predict``), run the model, build
SR/SEG/heatmap objects with `sr_writer`, write them to the outbox, then in ONE
transaction mark the job done and queue one delivery per (object, destination) and its
notifications (`dicom_node.work.notification_queue`). While
it runs, a heartbeat thread renews the job's lease; a worker that loses its lease
drops its results instead of committing over the new owner.

Outcomes: a series the model cannot take (``UnsupportedSeriesError``) skips the job
with the reason; a broken package, a missing backend or results that cannot be built
fail it at once (retrying cannot help); anything else is retried with backoff
(``worker.retry_backoff_seconds``, doubling, at most ``retry_backoff_max_seconds``) up
to ``worker.max_attempts``, then failed with the error kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.config import NodeConfig
from dicom_node.db.ownership import owner_id
from dicom_node.db.schema import Instance, Series, WorkState, utcnow
from dicom_node.metrics import INFERENCE_SECONDS
from dicom_node.work.chain import StepJob, advance_chain
from dicom_node.work.chain_report import amend_upstream_report
from dicom_node.work.delivery_queue import queue_deliveries
from dicom_node.work.findings import job_findings, series_findings
from dicom_node.work.jobs import ClaimedJob, claim_job, end_job, renew_lease, retry_or_fail
from dicom_node.work.memory_release import release_freed_memory
from dicom_node.work.model_cache import ModelCache
from dicom_node.work.notification_queue import queue_notifications
from dicom_node.work.outbox import Outbox, OutboxFile
from dicom_node.work.step_input import StepInputError, step_input
from inference import (
    BackendUnavailableError,
    ModelPackageError,
    Prediction,
    UnsupportedSeriesError,
)
from sr_writer import ResultBuildError, build_results

logger = logging.getLogger(__name__)

# Deterministic failures: a retry would fail the same way.
PERMANENT_ERRORS = (ModelPackageError, BackendUnavailableError, ResultBuildError, StepInputError)


class JobSkipped(Exception):
    """Nothing in the job could run; ``reason`` says why for each series."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LeaseLost(Exception):
    """Another process owns the job now; this worker's results are dropped."""


@dataclass
class Timings:
    """Seconds per phase of one job run, stored on the job for status and benchmarks."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the seconds the ``with`` block takes to phase ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - start, 4)


def load_series(session: Session, study_id: int, series_uid: str) -> list[Dataset]:
    """The instances of one series from the spool, in instance-number order.

    Raises
    ------
    FileNotFoundError
        When a spooled file is gone (removed by retention, or the spool was lost).
    pydicom.errors.InvalidDicomError
        When a spooled file is not DICOM.
    """
    paths = session.scalars(
        select(Instance.path)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.series_instance_uid == series_uid, Instance.study_id == study_id)
        .order_by(Instance.instance_number, Instance.id)
    ).all()
    return [pydicom.dcmread(Path(path)) for path in paths]


class LeaseKeeper:
    """Renews a job's lease every third of ``lease_seconds`` until stopped."""

    def __init__(self, sessions: sessionmaker[Session], job: ClaimedJob, lease_seconds: float):
        self._sessions = sessions
        self._job = job
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_seconds / 3):
            try:
                if not renew_lease(self._sessions, self._job, self._lease_seconds):
                    self.lost = True
                    logger.warning("job lease lost", extra={"job_id": self._job.id})
                    return
            except Exception:
                logger.exception("lease renewal failed", extra={"job_id": self._job.id})

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """One inference worker thread's logic; `run` loops until ``stop`` is set.

    Parameters
    ----------
    config
        The node config (``worker``, ``node.storage_dir``, models).
    sessions
        Database sessions.
    models
        The process's model cache, shared by its worker threads.
    """

    def __init__(
        self, config: NodeConfig, sessions: sessionmaker[Session], models: ModelCache
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.models = models
        self.outbox = Outbox(config.node.storage_dir)

    def run(self, stop: threading.Event) -> None:
        """Claim and run jobs until ``stop`` is set; database errors are logged and waited out."""
        worker_id = owner_id("worker")
        logger.info("worker started", extra={"worker_id": worker_id})
        while not stop.is_set():
            try:
                busy = self.run_once(worker_id)
            except Exception:
                logger.exception("worker loop error; retrying", extra={"worker_id": worker_id})
                busy = False
            if not busy:
                stop.wait(self.config.worker.poll_seconds)

    def run_once(self, worker_id: str) -> bool:
        """Claim one due job and run it; False when the queue had none for us.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database fails while claiming or recording.
        """
        settings = self.config.worker
        job = claim_job(self.sessions, worker_id, settings.lease_seconds)
        if job is None:
            return False
        log = {"job_id": job.id, "study_uid": job.study_instance_uid, "model": job.model_name}
        if job.step:
            log.update(route=job.route_name, step=job.step)
        logger.info("job started", extra={**log, "attempt": job.attempts})
        if job.generation < job.study_generation:
            with self.sessions.begin() as session:
                end_job(session, job, WorkState.SKIPPED, error="superseded: the study re-opened")
            audit(AuditEvent.JOB_RUN, **log, outcome="skipped", reason="the study re-opened")
            return True
        try:
            with LeaseKeeper(self.sessions, job, settings.lease_seconds) as lease:
                self._run_claimed(job, lease, log)
        finally:
            release_freed_memory()  # the series' memory, not the largest series' high-water
        return True

    def _run_claimed(self, job: ClaimedJob, lease: LeaseKeeper, log: dict[str, object]) -> None:
        settings = self.config.worker
        timings = Timings({"queue_wait": round((utcnow() - job.created_at).total_seconds(), 4)})
        steps: list[StepJob] = []  # a chain's later steps this job's end decided
        try:
            files, problems, found = self._process(job, timings, lambda: lease.lost)
            with timings.phase("commit"), self.sessions.begin() as session:
                note = "; ".join(problems) or None
                findings = job_findings(found, files)
                if not end_job(
                    session,
                    job,
                    WorkState.DONE,
                    error=note,
                    timings=timings.phases,
                    findings=findings,
                ):
                    raise LeaseLost()
                steps.extend(advance_chain(session, self.config, job.id))
                queue_deliveries(session, job.id, files, job.destinations)
                queue_notifications(session, job.id, self.config.notifications)
        except LeaseLost:
            logger.warning("job taken over by another worker; results dropped", extra=log)
            return
        except JobSkipped as skip:
            with self.sessions.begin() as session:
                end_job(session, job, WorkState.SKIPPED, error=skip.reason, timings=timings.phases)
                steps.extend(self._not_run(session, job, f"was skipped: {skip.reason}"))
            logger.warning("job skipped", extra={**log, "reason": skip.reason})
            audit(AuditEvent.JOB_RUN, **log, outcome="skipped", reason=skip.reason)
            audit_steps(job, steps)
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"

            def not_run(session: Session) -> None:
                steps.extend(self._not_run(session, job, f"failed: {error}"))

            state = retry_or_fail(
                self.sessions,
                job,
                error,
                max_attempts=settings.max_attempts,
                backoff_seconds=settings.retry_backoff_seconds,
                backoff_max_seconds=settings.retry_backoff_max_seconds,
                permanent=isinstance(exc, PERMANENT_ERRORS),
                on_failed=not_run,
            )
            logger.error(f"job attempt failed ({state})", extra={**log, "error": error})
            audit(AuditEvent.JOB_RUN, **log, outcome=f"failed ({state})", error=error)
            audit_steps(job, steps)
            return
        logger.info(
            "job done",
            extra={
                **log,
                "results": len(files),
                **{f"t_{k}": v for k, v in timings.phases.items()},
            },
        )
        self._audit_done(job, log, files, problems)
        audit_steps(job, steps)

    def _not_run(self, session: Session, job: ClaimedJob, outcome: str) -> list[StepJob]:
        """A job that ended without results: its chain's later steps are marked not run,
        and the report of the step it ran after is amended to say so (`chain_report`)."""
        try:
            amend_upstream_report(session, self.outbox, job.id, outcome)
        except OSError as exc:  # the step's end and the steps after it are recorded anyway
            logger.error("earlier report not amended", extra={"job_id": job.id, "error": exc})
        return advance_chain(session, self.config, job.id)

    def _audit_done(
        self,
        job: ClaimedJob,
        log: dict[str, object],
        files: list[OutboxFile],
        problems: list[str],
    ) -> None:
        """The audit lines of a finished job: the run, then each result object."""
        spec = self.models.get(job.model_name).spec.model
        audit(
            AuditEvent.JOB_RUN,
            **log,
            model_version=spec.version,
            outcome="done",
            results=len(files),
            problems=problems,
            destinations=job.destinations,
        )
        for file in files:
            audit(
                AuditEvent.RESULT_CREATED,
                study_uid=job.study_instance_uid,
                job_id=job.id,
                result_sop_uid=file.sop_instance_uid,
                sop_class_uid=file.sop_class_uid,
            )

    def _build_results(
        self, prediction: Prediction, datasets: list[Dataset], comments: list[str]
    ) -> list[Dataset]:
        """The SR, SEG and heatmap objects of one series, as ``[results]`` asks."""
        settings = self.config.results
        return build_results(
            prediction,
            datasets,
            comments=comments,
            device_name=self.config.node.ae_title,
            manufacturer=settings.manufacturer,
            institution_name=settings.institution_name,
            segmentation_kind=settings.segmentation,
            parametric_map=settings.parametric_maps,
        )

    def _process(
        self, job: ClaimedJob, timings: Timings, lost: Callable[[], bool]
    ) -> tuple[list[OutboxFile], list[str], list[dict[str, Any]]]:
        with timings.phase("model_load"):
            model = self.models.get(job.model_name)
        with self.sessions() as session:
            step = step_input(session, self.config, job)
        results: list[Dataset] = []
        problems: list[str] = []
        found: list[dict[str, Any]] = []
        for series_uid in job.series_uids:
            with timings.phase("load"), self.sessions() as session:
                datasets = load_series(session, job.study_id, series_uid)
            if not datasets:
                problems.append(f"series {series_uid}: no instances in the spool")
                continue
            try:
                with timings.phase("predict"):
                    start = time.perf_counter()
                    # A fractional SEG writes the model's probabilities: keep them.
                    fractional = self.config.results.segmentation == "fractional"
                    model_input = step.model_input(series_uid, datasets)
                    prediction = model.predict(model_input, keep_probabilities=fractional)
                    INFERENCE_SECONDS.labels(model=job.model_name).observe(
                        time.perf_counter() - start
                    )
            except UnsupportedSeriesError as exc:
                problems.append(f"series {series_uid}: {exc.reason}")
                continue
            if prediction.skipped:
                problems.append(f"series {series_uid}: skipped " + "; ".join(prediction.skipped))
            with timings.phase("results"):
                # Built over the stored pixels: a masked input changes no geometry.
                results.extend(self._build_results(prediction, datasets, step.comments))
                found.append(series_findings(prediction, datasets[0]))
            if lost():
                raise LeaseLost()
        if not results:
            raise JobSkipped("; ".join(problems) or "no series to run")
        with timings.phase("outbox"):
            files = self.outbox.write(job.id, results)
        return files, problems, found


def audit_steps(job: ClaimedJob, steps: list[StepJob]) -> None:
    """One audit line per later chain step a finished job queued or marked not run."""
    for step in steps:
        audit(
            AuditEvent.CHAIN_STEP,
            study_uid=job.study_instance_uid,
            job_id=step.job_id,
            upstream_job_id=step.upstream_job_id,
            route=step.route_name,
            step=step.step,
            model=step.model_name,
            outcome=str(step.state),
            reason=step.reason,
        )
        log = logger.info if step.state == WorkState.QUEUED else logger.warning
        log(
            "chain step queued" if step.state == WorkState.QUEUED else "chain step not run",
            extra={
                "study_uid": job.study_instance_uid,
                "job_id": step.job_id,
                "upstream_job_id": step.upstream_job_id,
                "step": step.step,
                "model": step.model_name,
                "reason": step.reason,
            },
        )
