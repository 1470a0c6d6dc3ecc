"""One node process: the components its role needs, started together, stopped cleanly.

``dicom-node serve --role listener|worker|all`` builds a :class:`Service`: the database
engine, the spool, our AE identity and a scheduler, then whatever
`dicom_node.roles.COMPONENTS` lists for its role (listener, completion, routing,
workers, delivery, retention, metrics), added through :meth:`Service.add_component`
and :meth:`Service.add_job`.

On SIGTERM or SIGINT the listener stops accepting associations and lets C-STOREs in
flight finish, the scheduler finishes running jobs, the other components stop, and
:meth:`Service.run` returns 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit, close_audit_log, open_audit_log
from dicom_node.config import NodeConfig
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.intake.spool import Spool
from dicom_node.net.scp import Listener
from dicom_node.net.scu import LocalAE
from dicom_node.roles import COMPONENTS, LISTENER_ROLES, ROLES, Component, Role

logger = logging.getLogger(__name__)


class Service:
    """The parts of one node process, by role.

    Parameters
    ----------
    config
        The validated config.
    role
        Which parts run here; see `dicom_node.roles.COMPONENTS`.
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
        self.spool = Spool(config.node.storage_dir, receives=role in LISTENER_ROLES)
        self.local_ae = LocalAE.from_config(config)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.components: list[Component] = []
        self.listener: Listener | None = None
        self._stop = threading.Event()
        self._audit_handler: logging.Handler | None = None
        for roles, build in COMPONENTS:
            if role in roles:
                build(self)

    def add_component(self, component: Component) -> None:
        """Start ``component`` with the others (in order) and stop it in reverse order."""
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
            When the listener cannot bind its address, or the audit file cannot be opened.
        """
        self._audit_handler = open_audit_log(self.config.audit, self.role)
        config_json = self.config.model_dump_json()
        audit(
            AuditEvent.NODE_STARTED,
            role=self.role,
            config_sha256=hashlib.sha256(config_json.encode()).hexdigest(),
            config=json.loads(config_json),
        )
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
        close_audit_log(self._audit_handler)
        self._audit_handler = None

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
