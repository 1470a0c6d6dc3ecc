"""What each role of a node process runs: its components and periodic jobs.

``dicom-node serve --role listener|worker|all`` builds a `dicom_node.service.Service`,
which calls every builder of :data:`COMPONENTS` whose roles include its own, once. A
builder adds

* a long-running part with ``host.add_component(component)`` (anything with
  ``start()`` and ``stop()``; started in order, stopped in reverse order), or
* a periodic job with ``host.add_job(func, seconds, name)`` (one run at a time per
  job, the first at start-up, so that work left over while the node was down is
  picked up at once).

Builders see the process only through the small :class:`Host` protocol, never the
service class itself, so that this module and the service do not import each other.

- listener role: the DICOM listener, the STOW-RS receiver (when enabled), completion,
  routing of complete studies into
  jobs, the storage commitment report handler (the archive's N-EVENT-REPORT arrives
  at the listener's port), retention;
- worker role: crash recovery and the inference worker threads, reclaiming work of
  dead processes on other hosts, delivery, result notifications;
- every role: the Prometheus endpoint, when ``[metrics] enabled = true``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Literal, Protocol

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DicomwebPeerConfig, NodeConfig
from dicom_node.intake.completion import CompletionScanner, CountSource
from dicom_node.intake.orphans import reconcile_orphans
from dicom_node.intake.spool import Spool
from dicom_node.metrics import MetricsServer
from dicom_node.net.dicomweb_auth import DicomwebConnector
from dicom_node.net.dicomweb_query import find_study_counts as qido_study_counts
from dicom_node.net.scp import Listener
from dicom_node.net.scu import LocalAE, find_study_counts
from dicom_node.net.stow_receiver import StowReceiver
from dicom_node.work.commitment import CommitmentReportHandler, CommitmentReports
from dicom_node.work.delivery import DeliveryScanner
from dicom_node.work.drift_monitor import DriftCollector, load_profiles
from dicom_node.work.jobs import reclaim_abandoned
from dicom_node.work.notification import NotificationScanner
from dicom_node.work.retention import apply_retention
from dicom_node.work.routing import route_complete_studies, unmatchable_conditions
from dicom_node.work.worker_pool import WorkerPool

logger = logging.getLogger(__name__)

Role = Literal["listener", "worker", "all"]
ROLES: tuple[Role, ...] = ("listener", "worker", "all")
LISTENER_ROLES = frozenset({"listener", "all"})
WORKER_ROLES = frozenset({"worker", "all"})


class Component(Protocol):
    """A long-running part of the process."""

    def start(self) -> None:
        """Start working (in the order components were added)."""

    def stop(self) -> None:
        """Stop and release what it holds (in reverse order)."""


class Host(Protocol):
    """What a builder may use of the process it builds."""

    config: NodeConfig
    sessions: sessionmaker[Session]
    spool: Spool
    local_ae: LocalAE
    listener: Listener | None

    def add_component(self, component: Component) -> None:
        """Run ``component`` with the process."""

    def add_job(self, func: Callable[[], object], seconds: float, name: str) -> None:
        """Run ``func`` every ``seconds``, first at start-up; one run at a time."""


def add_listener(host: Host) -> None:
    """The DICOM listener (C-ECHO, C-STORE into the spool and the index)."""
    host.listener = Listener(host.config, host.sessions, host.spool)
    host.add_component(host.listener)


def add_stow_receiver(host: Host) -> None:
    """The STOW-RS receiver, when ``[dicomweb] enabled``: it stores through the
    listener's C-STORE handler.

    Raises
    ------
    RuntimeError
        When no listener was added before (a wiring error in :data:`COMPONENTS`).
    """
    if not host.config.dicomweb.enabled:
        return
    if host.listener is None:
        raise RuntimeError("the STOW-RS receiver needs the listener (listener role)")
    host.add_component(StowReceiver(host.config, host.listener.handler, host.spool))


def add_completion(host: Host) -> None:
    """The completion scan: quiet timer, and the query peer's counts when one is set
    (C-FIND, or QIDO-RS for a DICOMweb peer)."""
    settings = host.config.completion
    counts: CountSource | None = None
    evidence = "C-FIND"
    if settings.query_peer is not None:
        peer = host.config.peer(settings.query_peer)
        if isinstance(peer, DicomwebPeerConfig):
            counts = functools.partial(qido_study_counts, DicomwebConnector(peer))
            evidence = "QIDO-RS"
        else:
            counts = functools.partial(find_study_counts, host.local_ae, peer)
    scanner = CompletionScanner(host.sessions, settings, counts, evidence=evidence)
    host.add_job(scanner.scan, settings.scan_interval_seconds, "completion")


def add_routing(host: Host) -> None:
    """Route complete studies into jobs, as often as completion scans."""
    for key, message in unmatchable_conditions(host.config):
        logger.warning("route condition never holds", extra={"key": key, "reason": message})
    job = functools.partial(route_complete_studies, host.sessions, host.config)
    host.add_job(job, host.config.completion.scan_interval_seconds, "routing")


def add_commitment_reports(host: Host) -> None:
    """Accept N-EVENT-REPORTs of storage commitment on the listener's port.

    Raises
    ------
    RuntimeError
        When no listener was added before (a wiring error in :data:`COMPONENTS`).
    """
    if host.listener is None:
        raise RuntimeError("storage commitment reports need the listener (listener role)")
    handler = CommitmentReportHandler(host.sessions, host.config.delivery)
    host.add_component(CommitmentReports(host.listener, handler))


def add_retention(host: Host) -> None:
    """Remove spooled instances, result files and rows that retention allows; index or
    remove spool files no row knows (at start-up, then with every retention scan)."""
    settings = host.config.retention
    job = functools.partial(apply_retention, host.sessions, host.config)
    host.add_job(job, settings.scan_interval_seconds, "retention")
    orphans = functools.partial(
        reconcile_orphans, host.sessions, host.spool, settings.orphan_grace_seconds
    )
    host.add_job(orphans, settings.scan_interval_seconds, "orphan-files")


def add_workers(host: Host) -> None:
    """Inference worker threads, plus reclaiming work of dead processes on other hosts."""
    host.add_component(WorkerPool(host.config, host.sessions))
    reclaim = functools.partial(reclaim_abandoned, host.sessions)
    host.add_job(reclaim, host.config.worker.lease_seconds / 2, "reclaim-jobs")


def add_delivery(host: Host) -> None:
    """Send due results to their destinations, retrying with backoff."""
    scanner = DeliveryScanner(host.config, host.sessions, host.local_ae)
    host.add_job(scanner.scan, host.config.delivery.scan_interval_seconds, "delivery")


def add_notifications(host: Host) -> None:
    """Announce delivered results to webhooks and FHIR servers, when any are configured."""
    if host.config.notifications:
        scanner = NotificationScanner(host.config, host.sessions)
        host.add_job(scanner.scan, host.config.delivery.scan_interval_seconds, "notifications")


def add_metrics(host: Host) -> None:
    """The Prometheus endpoint, when enabled, with the drift gauges of profiled models."""
    if host.config.metrics.enabled:
        drift = DriftCollector(host.config, host.sessions, load_profiles(host.config))
        host.add_component(MetricsServer(host.config.metrics, host.sessions, extra=[drift]))


Builder = Callable[[Host], None]

# (roles that run it, what it adds), in start order.
COMPONENTS: list[tuple[frozenset[str], Builder]] = [
    (LISTENER_ROLES, add_listener),
    (LISTENER_ROLES, add_stow_receiver),
    (LISTENER_ROLES, add_completion),
    (LISTENER_ROLES, add_routing),
    (LISTENER_ROLES, add_commitment_reports),
    (LISTENER_ROLES, add_retention),
    (WORKER_ROLES, add_workers),
    (WORKER_ROLES, add_delivery),
    (WORKER_ROLES, add_notifications),
    (frozenset(ROLES), add_metrics),
]
