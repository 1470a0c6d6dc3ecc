"""Ingest first: under ``serve --role all``, inference runs in a child process.

On one machine the listener and the model compete for the CPU, and in one interpreter
also for the GIL; a sending PACS then waits on every C-STORE while a job runs. With
``[worker] own_process = true`` (the default) ``serve --role all`` runs the listener
role itself and starts the worker role (inference, result building, delivery) as
``dicom-node serve --role worker`` in a child process that

- lowers its own CPU priority by ``worker.nice`` (the listener wins every contention);
- sizes its thread pools to leave the listener a core: ONNX Runtime's intra-op pool
  (``--threads``), and OpenMP / OpenBLAS / MKL through their environment variables,
  which must be set before numpy loads, hence here, in the child's environment;
- dies with its parent (``--parent-pid``, SIGKILL), so that a killed node leaves no
  inference running behind it;
- writes its Prometheus counters (jobs finished, inference seconds, deliveries) to a
  private folder in prometheus_client's multiprocess mode, which the parent serves on
  its own ``/metrics`` endpoint, summed with its own
  (`dicom_node.metrics.ChildProcessMetrics`): one endpoint per node, as before.

The child is restarted when it exits on its own; the work it held is leased in the
database and picked up again, as after any crash.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from dicom_node.config import WorkerSection
from dicom_node.metrics import MULTIPROCESS_DIR_VARIABLE, ChildProcessMetrics

logger = logging.getLogger(__name__)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RESTART_DELAY_S = 5.0
STOP_TIMEOUT_S = 60.0


def inference_threads() -> int:
    """Threads for inference: every core but one (the listener's), at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


class InferenceProcess:
    """The worker role in a child process at lower priority (a service component).

    Parameters
    ----------
    config_path
        The config file the child reads (the parent's own).
    settings
        ``[worker]``: its ``nice``.
    log_level
        The parent's ``--log-level``, passed on (None: the config's).
    registry
        Where the child's metrics are registered: the one this process's ``/metrics``
        endpoint serves.
    """

    def __init__(
        self,
        config_path: Path,
        settings: WorkerSection,
        log_level: str | None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.config_path = config_path
        self.settings = settings
        self.log_level = log_level
        self.registry = registry
        self._metrics: ChildProcessMetrics | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None

    def command(self) -> list[str]:
        """The child's command line."""
        logging_options = [] if self.log_level is None else ["--log-level", self.log_level]
        return [
            *(sys.executable, "-m", "dicom_node", *logging_options, "serve"),
            *("-c", str(self.config_path), "--role", "worker"),
            *("--nice", str(self.settings.nice), "--threads", str(inference_threads())),
            *("--parent-pid", str(os.getpid())),
        ]

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._metrics is not None
        threads = str(inference_threads())
        env = {
            **os.environ,
            **dict.fromkeys(THREAD_VARIABLES, threads),
            MULTIPROCESS_DIR_VARIABLE: str(self._metrics.directory),
        }
        process = subprocess.Popen(self.command(), env=env)
        logger.info(
            "inference process started",
            extra={"pid": process.pid, "nice": self.settings.nice, "threads": threads},
        )
        return process

    def start(self) -> None:
        """Start the child and a thread that restarts it if it exits on its own.

        Raises
        ------
        OSError
            When the interpreter cannot be started, or the metrics folder not created.
        """
        # Private to this run: counts start at zero with the node, as in any process.
        folder = Path(tempfile.mkdtemp(prefix="dicom-node-worker-metrics-"))
        self._metrics = ChildProcessMetrics(folder)
        self.registry.register(self._metrics)
        try:
            self._process = self._spawn()
        except OSError:
            self._drop_metrics()
            raise
        self._watch = threading.Thread(target=self._watch_child, name="inference-watch")
        self._watch.daemon = True
        self._watch.start()

    def _watch_child(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            code = process.wait()
            if self._stopping.wait(RESTART_DELAY_S):
                return
            logger.error("inference process exited; restarting", extra={"exit_code": code})
            try:
                self._process = self._spawn()
            except OSError as exc:
                logger.error("inference process cannot start", extra={"error": exc})
                return

    def stop(self) -> None:
        """Stop the child (SIGTERM: it finishes its running job), killing it after
        :data:`STOP_TIMEOUT_S`."""
        self._stopping.set()
        process = self._process
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.error("inference process did not stop; killed", extra={"pid": process.pid})
                process.kill()
                process.wait()
        if self._watch is not None:
            self._watch.join(timeout=RESTART_DELAY_S + 1)
        self._drop_metrics()

    def _drop_metrics(self) -> None:
        if self._metrics is not None:
            self.registry.unregister(self._metrics)
            shutil.rmtree(self._metrics.directory, ignore_errors=True)
            self._metrics = None
