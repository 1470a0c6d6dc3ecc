"""One node process: the components its role needs, started together, stopped cleanly.

``dicom-node serve --role listener|worker|all`` builds a :class:`Service`. Each entry
of :data:`COMPONENTS` is ``(roles, build)``: when the process's role is in ``roles``,
``build(service)`` is called once to add what it needs, either

* a long-running part with ``service.add_component(component)`` (anything with
  ``start()`` and ``stop()``; started in order, stopped in reverse order), or
* a periodic job with ``service.add_job(func, seconds, name)`` on the shared
  APScheduler scheduler (one run at a time per job, the first run at start-up, so
  that work left over while the node was down is picked up at once).

Extension point: orchestration adds routing, workers and delivery by appending to
``COMPONENTS`` (e.g. ``(WORKER_ROLES, add_workers)``), nothing else changes.

On SIGTERM or SIGINT the listener stops accepting associations and lets C-STOREs in
flight finish, the scheduler finishes running jobs, the other components stop, and
:meth:`Service.run` returns 0.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Literal, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import orchestration
from dicom_node.completion import CompletionScanner, CountSource
from dicom_node.config import DicomwebPeerConfig, NodeConfig
from dicom_node.db import create_db_engine, session_factory
from dicom_node.dicomweb_auth import DicomwebConnector
from dicom_node.dicomweb_query import find_study_counts as qido_study_counts
from dicom_node.scp import Listener
from dicom_node.scu import LocalAE, find_study_counts
from dicom_node.spool import Spool
from dicom_node.stow_receiver import StowReceiver

logger = logging.getLogger(__name__)

Role = Literal["listener", "worker", "all"]
ROLES: tuple[Role, ...] = ("listener", "worker", "all")
LISTENER_ROLES = frozenset({"listener", "all"})
WORKER_ROLES = frozenset({"worker", "all"})


class Component(Protocol):
    """A long-running part of the process."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Service:
    """The parts of one node process, by role.

    Parameters
    ----------
    config
        The validated config.
    role
        Which parts run here; see :data:`COMPONENTS`.
    engine
        A database engine to share (tests); by default one for ``node.database_url``.
    """

    def __init__(
        self, config: NodeConfig, role: Role = "all", engine: Engine | None = None
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.config = config
        self.role = role
        self.engine = engine or create_db_engine(config.node.database_url)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.spool = Spool(config.node.storage_dir)
        self.local_ae = LocalAE.from_config(config)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.components: list[Component] = []
        self.listener: Listener | None = None
        self._stop = threading.Event()
        for roles, build in COMPONENTS:
            if role in roles:
                build(self)

    def add_component(self, component: Component) -> None:
        self.components.append(component)

    def add_job(self, func: Callable[[], object], seconds: float, name: str) -> None:
        """Run ``func`` every ``seconds``, first at start-up; one run at a time."""
        self.scheduler.add_job(
            func,
            "interval",
            seconds=seconds,
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )

    def start(self) -> None:
        """Start every component, then the scheduler.

        Raises
        ------
        OSError
            When the listener cannot bind its address.
        """
        for component in self.components:
            component.start()
        self.scheduler.start()
        logger.info(
            "node started", extra={"role": self.role, "jobs": len(self.scheduler.get_jobs())}
        )

    def stop(self) -> None:
        """Stop accepting associations and finish the C-STOREs in flight first, then the
        scheduler's running jobs, then the other components (reverse order)."""
        if self.listener is not None:
            self.listener.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        for component in reversed(self.components):
            if component is not self.listener:
                component.stop()
        self.engine.dispose()
        logger.info("node stopped", extra={"role": self.role})

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask :meth:`run` to stop; safe from a signal handler."""
        if signum is not None:
            logger.info("stop requested", extra={"signal": signal.Signals(signum).name})
        self._stop.set()

    def run(self) -> int:
        """Start, serve until SIGTERM or SIGINT, stop cleanly; the exit status (0).

        Raises
        ------
        OSError
            When the listener cannot bind its address.
        """
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop.wait(timeout=1.0):
                pass
        finally:
            self.stop()
        return 0


def add_listener(service: Service) -> None:
    """The DICOM listener (C-ECHO, C-STORE into the spool and the index)."""
    service.listener = Listener(service.config, service.sessions, service.spool)
    service.add_component(service.listener)


def add_stow_receiver(service: Service) -> None:
    """The STOW-RS receiver, when ``[dicomweb] enabled``: stores through the listener's
    C-STORE handler, so it needs the listener (added before it)."""
    if not service.config.dicomweb.enabled:
        return
    if service.listener is None:
        raise RuntimeError("the STOW-RS receiver needs the listener (listener role)")
    receiver = StowReceiver(service.config, service.listener.handler, service.spool)
    service.add_component(receiver)


def add_completion(service: Service) -> None:
    """The completion scan: quiet timer, and the query peer's counts when one is set
    (C-FIND, or QIDO-RS for a DICOMweb peer)."""
    settings = service.config.completion
    counts: CountSource | None = None
    evidence = "C-FIND"
    if settings.query_peer is not None:
        peer = service.config.peer(settings.query_peer)
        if isinstance(peer, DicomwebPeerConfig):
            counts = functools.partial(qido_study_counts, DicomwebConnector(peer))
            evidence = "QIDO-RS"
        else:
            counts = functools.partial(find_study_counts, service.local_ae, peer)
    scanner = CompletionScanner(service.sessions, settings, counts, evidence=evidence)
    service.add_job(scanner.scan, settings.scan_interval_seconds, "completion")


Builder = Callable[[Service], None]

# (roles that run it, what it adds). Orchestration appends its own entries here.
COMPONENTS: list[tuple[frozenset[str], Builder]] = [
    (LISTENER_ROLES, add_listener),
    (LISTENER_ROLES, add_stow_receiver),
    (LISTENER_ROLES, add_completion),
    # Orchestration (dicom_node.orchestration): routing, commitment reports, retention,
    # workers with crash recovery, delivery, metrics.
    (LISTENER_ROLES, orchestration.add_routing),
    (LISTENER_ROLES, orchestration.add_commitment_reports),
    (LISTENER_ROLES, orchestration.add_retention),
    (WORKER_ROLES, orchestration.add_workers),
    (WORKER_ROLES, orchestration.add_delivery),
    (frozenset(ROLES), orchestration.add_metrics),
]
