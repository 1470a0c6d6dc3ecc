"""Prometheus metrics: event counters in each process, queue gauges read from the database.

Counters and histograms (instances received, studies completed, inference seconds,
delivery failures) count what this process did; Prometheus sums them over the
listener and worker processes. A process's child (``serve --role all`` runs the worker
role in one, `dicom_node.work.inference_process`) has no endpoint of its own: it writes
its counters to files (prometheus_client's multiprocess mode), which the parent reads at
scrape time (:class:`ChildProcessMetrics`) and serves summed with its own, one family per
name. The queue gauges (jobs, deliveries and notifications by
state, queue depth, age of the oldest queued job) are read from the shared database at scrape
time, so that every process reports the same, current picture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import MetricsSection
from dicom_node.db.schema import Delivery, Job, Notification, WorkState, utcnow
from dicom_node.db.timestamps import as_utc

logger = logging.getLogger(__name__)

INSTANCES_RECEIVED = Counter(
    "dicom_node_instances_received", "Instances stored by the listener in this process"
)
STUDIES_COMPLETED = Counter(
    "dicom_node_studies_completed", "Complete studies routed (to jobs or skipped)"
)
JOBS_FINISHED = Counter(
    "dicom_node_jobs_finished", "Job runs that ended, by model and outcome", ["model", "state"]
)
INFERENCE_SECONDS = Histogram(
    "dicom_node_inference_seconds",
    "Model time per series (Model.predict)",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
DELIVERY_FAILURES = Counter(
    "dicom_node_delivery_failures",
    "Failed delivery attempts, by peer and kind (transient or permanent)",
    ["peer", "kind"],
)
DELIVERIES_SENT = Counter("dicom_node_deliveries_sent", "Result objects stored at a peer", ["peer"])

# The variable that switches prometheus_client to multiprocess mode: set in a child's
# environment, before it imports prometheus_client, it makes the child write its metric
# values to files in that folder.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class ChildProcessMetrics(Collector):
    """What a child process counted, read from the files of its multiprocess mode.

    The child's families (jobs finished, inference seconds, deliveries) are the same
    module-level metrics as this process's own, so the served registry merges them by
    name (:func:`merge_families`). A child that was restarted left its files behind:
    its counts go on adding up, as Prometheus expects of a counter.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> list[Metric]:
        """Nothing to reserve at registration: the child's names repeat this process's."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The child's counters and histograms, summed over its files (one per process
        id and metric type)."""
        files = [str(path) for path in sorted(self.directory.glob("*.db"))]
        yield from MultiProcessCollector.merge(files, accumulate=True)


def merge_families(metrics: Iterable[Metric]) -> list[Metric]:
    """One family per name: the samples of same-named families summed series by series.

    A counter or histogram counted in this process and in its child (or only in the
    child, while this process still declares the family) would otherwise be exposed twice,
    which Prometheus rejects. A ``_created`` sample keeps the earliest time.
    """
    families: dict[str, Metric] = {}
    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for metric in metrics:
        if metric.name not in families:
            families[metric.name] = Metric(
                metric.name, metric.documentation, metric.type, metric.unit
            )
            series[metric.name] = {}
        merged = series[metric.name]
        for sample in metric.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            earlier = merged.get(key)
            if earlier is None:
                merged[key] = sample
            elif sample.name.endswith("_created"):
                merged[key] = earlier._replace(value=min(earlier.value, sample.value))
            else:
                merged[key] = earlier._replace(value=earlier.value + sample.value)
    for name, family in families.items():
        family.samples = list(series[name].values())
    return list(families.values())


class _OneFamilyPerName(Collector):
    """A registry's metrics with same-named families merged (:func:`merge_families`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """The registry's families, merged now."""
        yield from merge_families(self._registry.collect())


class QueueCollector(Collector):
    """Job, delivery and notification gauges computed from the database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        """Jobs, deliveries and notifications by state, queue depth and oldest queued age,
        read now."""
        jobs = GaugeMetricFamily(
            "dicom_node_jobs", "Jobs by state and model", labels=["state", "model"]
        )
        deliveries = GaugeMetricFamily(
            "dicom_node_deliveries", "Deliveries by state and peer", labels=["state", "peer"]
        )
        notifications = GaugeMetricFamily(
            "dicom_node_notifications",
            "Result notifications by state and [[notifications]] entry",
            labels=["state", "target"],
        )
        with self._sessions() as session:
            for state, model, count in session.execute(
                select(Job.state, Job.model_name, func.count()).group_by(Job.state, Job.model_name)
            ):
                jobs.add_metric([str(state), model], count)
            for state, peer, count in session.execute(
                select(Delivery.state, Delivery.peer_name, func.count()).group_by(
                    Delivery.state, Delivery.peer_name
                )
            ):
                deliveries.add_metric([str(state), peer], count)
            for state, target, count in session.execute(
                select(Notification.state, Notification.target, func.count()).group_by(
                    Notification.state, Notification.target
                )
            ):
                notifications.add_metric([str(state), target], count)
            depth, oldest = session.execute(
                select(func.count(), func.min(Job.created_at)).where(Job.state == WorkState.QUEUED)
            ).one()
        yield jobs
        yield deliveries
        yield notifications
        yield GaugeMetricFamily("dicom_node_queue_depth", "Jobs waiting for a worker", value=depth)
        yield GaugeMetricFamily(
            "dicom_node_oldest_queued_job_age_seconds",
            "Age of the oldest queued job (0 when none)",
            value=_age_seconds(oldest),
        )


def _age_seconds(created: datetime | str | None) -> float:
    if created is None:
        return 0.0
    return max(0.0, (utcnow() - as_utc(created)).total_seconds())


class MetricsServer:
    """The ``/metrics`` HTTP endpoint of this process, with the queue collector attached."""

    def __init__(
        self,
        settings: MetricsSection,
        sessions: sessionmaker[Session],
        registry: CollectorRegistry = REGISTRY,
        extra: Sequence[Collector] = (),
    ) -> None:
        self._settings = settings
        self._registry = registry
        # The queue gauges, then what the stages add (drift gauges from dicom_node.work).
        self._collectors = [QueueCollector(sessions), *extra]
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    @property
    def port(self) -> int:
        """The bound port.

        Raises
        ------
        RuntimeError
            When the server is not running.
        """
        if self._server is None:
            raise RuntimeError("metrics server is not running")
        return int(self._server.server_port)

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises
        ------
        OSError
            When the host/port cannot be bound (in use, not an address of this host).
        """
        for collector in self._collectors:
            self._registry.register(collector)
        # Served through a view that merges a child's families into this process's.
        served = CollectorRegistry(support_collectors_without_names=True)
        served.register(_OneFamilyPerName(self._registry))
        try:
            self._server, self._thread = start_http_server(
                self._settings.port, addr=self._settings.host, registry=served
            )
        except OSError:
            self._unregister()
            raise
        logger.info("metrics listening", extra={"host": self._settings.host, "port": self.port})

    def stop(self) -> None:
        """Stop serving and detach from the registry (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._unregister()

    def _unregister(self) -> None:
        for collector in self._collectors:
            self._registry.unregister(collector)
