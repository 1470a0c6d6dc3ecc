"""The orchestration parts of a node process, as builders for `dicom_node.service`.

Each ``add_*`` function takes the :class:`~dicom_node.service.Service` being built and
adds scheduler jobs or components; ``service.COMPONENTS`` lists them with the roles
that run them:

- listener role: routing of complete studies into jobs, retention, and the handler
  of storage commitment reports (N-EVENT-REPORT arrives at the listener's port);
- worker role: crash recovery at start-up, the inference worker threads, delivery;
- every role: the Prometheus endpoint, when ``[metrics] enabled = true``.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING

from pynetdicom import evt

from dicom_node.commitment import STORAGE_COMMITMENT_PUSH_MODEL, CommitmentReportHandler
from dicom_node.delivery import DeliveryScanner
from dicom_node.delivery_queue import reclaim_abandoned_deliveries
from dicom_node.jobs import reclaim_abandoned
from dicom_node.metrics import MetricsServer
from dicom_node.model_cache import ModelCache
from dicom_node.retention import apply_retention
from dicom_node.routing import route_complete_studies, unmatchable_conditions
from dicom_node.worker import Worker
from sr_writer import warm_up

if TYPE_CHECKING:
    from dicom_node.service import Service

logger = logging.getLogger(__name__)

WORKER_STOP_GRACE_SECONDS = 30.0


class WorkerPool:
    """``worker.count`` inference threads sharing one model cache.

    At start it requeues the jobs and deliveries that a dead process left running
    (see `dicom_node.ownership`), then starts the threads. Stopping lets a job in
    flight finish for a grace period; one still running after it stays RUNNING and
    is requeued at once by the next start on this host (its owner is gone).
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.models = ModelCache(service.config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Requeue what a dead process left running, then start the worker threads.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database cannot be reached: the node does not start half-way.
        """
        sessions = self.service.sessions
        jobs = reclaim_abandoned(sessions)
        deliveries = reclaim_abandoned_deliveries(sessions)
        if jobs or deliveries:
            logger.warning(
                "recovered work of a stopped process",
                extra={"jobs": jobs, "deliveries": deliveries},
            )
        threading.Thread(target=self.warm_up, name="warm-up", daemon=True).start()
        worker = Worker(self.service.config, sessions, self.models)
        for index in range(self.service.config.worker.count):
            thread = threading.Thread(
                target=worker.run, args=(self._stop,), name=f"worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def warm_up(self) -> None:
        """Load every model routes use and warm highdicom, before the first job needs them.

        A model that cannot load is logged here; its jobs fail with the same error.
        """
        seconds = warm_up()
        logger.info("result writers warmed up", extra={"seconds": round(seconds, 3)})
        used = {name for route in self.service.config.routes for name in route.models}
        for name in sorted(used):
            try:
                self.models.get(name)
            except Exception as exc:
                logger.error("model cannot load", extra={"model": name, "error": exc})

    def stop(self) -> None:
        """Let running jobs finish for a grace period, then release the models."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WORKER_STOP_GRACE_SECONDS)
        self._threads.clear()
        self.models.close()


class CommitmentReports:
    """Binds the storage commitment report handler to the running listener.

    Orthanc (and other archives) send the N-EVENT-REPORT on a new association to the
    node's own port, proposing the Storage Commitment Push Model with themselves as
    SCP: the listener's AE accepts that context in either role, and this component,
    started after the listener, routes EVT_N_EVENT_REPORT to the handler.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.handler = CommitmentReportHandler(service.sessions, service.config.delivery)
        listener = service.listener
        if listener is None:
            raise RuntimeError("storage commitment reports need the listener (listener role)")
        listener.ae.add_supported_context(
            STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True
        )

    def start(self) -> None:
        """Route N-EVENT-REPORTs on the running listener to the handler.

        Raises
        ------
        RuntimeError
            When the listener has not been started first (a wiring error).
        """
        listener = self.service.listener
        if listener is None or listener.server is None:
            raise RuntimeError("the listener must start before storage commitment reports")
        listener.server.bind(evt.EVT_N_EVENT_REPORT, self.handler)

    def stop(self) -> None:
        """Nothing to release: the handler goes with the listener's server."""


def add_routing(service: Service) -> None:
    """Route complete studies into jobs, as often as completion scans."""
    for key, message in unmatchable_conditions(service.config):
        logger.warning("route condition never holds", extra={"key": key, "reason": message})
    job = functools.partial(route_complete_studies, service.sessions, service.config)
    service.add_job(job, service.config.completion.scan_interval_seconds, "routing")


def add_commitment_reports(service: Service) -> None:
    """Accept N-EVENT-REPORTs of storage commitment on the listener's port."""
    service.add_component(CommitmentReports(service))


def add_retention(service: Service) -> None:
    """Remove spooled instances and result files that retention allows."""
    job = functools.partial(apply_retention, service.sessions, service.config)
    service.add_job(job, service.config.retention.scan_interval_seconds, "retention")


def add_workers(service: Service) -> None:
    """Inference worker threads, plus reclaiming work of dead processes on other hosts."""
    service.add_component(WorkerPool(service))
    reclaim = functools.partial(reclaim_abandoned, service.sessions)
    service.add_job(reclaim, service.config.worker.lease_seconds / 2, "reclaim-jobs")


def add_delivery(service: Service) -> None:
    """Send due results to their destinations, retrying with backoff."""
    scanner = DeliveryScanner(service.config, service.sessions, service.local_ae)
    service.add_job(scanner.scan, service.config.delivery.scan_interval_seconds, "delivery")


def add_metrics(service: Service) -> None:
    """The Prometheus endpoint, when enabled."""
    if service.config.metrics.enabled:
        service.add_component(MetricsServer(service.config.metrics, service.sessions))
