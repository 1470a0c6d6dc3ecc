"""The inference side of a worker process: ``worker.count`` threads and their models.

At start the pool requeues the jobs and deliveries that a dead process left running
(see `dicom_node.db.ownership`), warms the result writers and the models routes use, then
starts the threads. Stopping lets a job in flight finish for a grace period; one still
running after it stays RUNNING and is requeued at once by the next start on this host
(its owner is gone).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.work.delivery_queue import reclaim_abandoned_deliveries
from dicom_node.work.jobs import reclaim_abandoned
from dicom_node.work.model_cache import ModelCache
from dicom_node.work.worker import Worker
from sr_writer import warm_up

logger = logging.getLogger(__name__)

WORKER_STOP_GRACE_SECONDS = 30.0


class WorkerPool:
    """``worker.count`` inference threads sharing one model cache (a service component).

    Parameters
    ----------
    config
        The node config (``worker``, models, routes).
    sessions
        Database sessions.
    """

    def __init__(self, config: NodeConfig, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions
        self.models = ModelCache(config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Requeue what a dead process left running, then start the worker threads.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database cannot be reached: the node does not start half-way.
        """
        jobs = reclaim_abandoned(self.sessions)
        deliveries = reclaim_abandoned_deliveries(self.sessions)
        if jobs or deliveries:
            logger.warning(
                "recovered work of a stopped process",
                extra={"jobs": jobs, "deliveries": deliveries},
            )
        threading.Thread(target=self.warm_up, name="warm-up", daemon=True).start()
        worker = Worker(self.config, self.sessions, self.models)
        for index in range(self.config.worker.count):
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
        used = {name for route in self.config.routes for name in route.all_models()}
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
