"""``serve --role all`` runs the worker role in a child process: what the child counts
(jobs finished, inference seconds, deliveries) reaches the node's one ``/metrics``
endpoint, summed with what the parent counts, one family per name."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.config import MetricsSection, PeerConfig
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.metrics import (
    JOBS_FINISHED,
    MULTIPROCESS_DIR_VARIABLE,
    ChildProcessMetrics,
    MetricsServer,
    merge_families,
)
from dicom_node.net.scu import LocalAE, send_files
from tests.conftest import REPO_ROOT, get_free_port
from tests.orchestration.archive import run_archive
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.studies import ct_series

# What a worker process counts for one job, written as a child in multiprocess mode.
CHILD_COUNTS = """
from dicom_node.metrics import INFERENCE_SECONDS, JOBS_FINISHED
JOBS_FINISHED.labels(model="child-test", state="done").inc(2)
INFERENCE_SECONDS.labels(model="child-test").observe(0.3)
INFERENCE_SECONDS.labels(model="child-test").observe(7)
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by name and labels; fails on a repeated family."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    names: list[str] = []
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    return found


def test_a_childs_counts_are_served_summed_with_the_parents(tmp_path: Path) -> None:
    folder = tmp_path / "child-metrics"
    folder.mkdir()
    env = {**os.environ, MULTIPROCESS_DIR_VARIABLE: str(folder), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", CHILD_COUNTS], env=env, check=True, timeout=60)
    JOBS_FINISHED.labels(model="child-test", state="done").inc()  # the parent's own
    child = ChildProcessMetrics(folder)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'node.db'}")
    server = MetricsServer(
        MetricsSection(enabled=True, port=get_free_port()), session_factory(engine)
    )
    REGISTRY.register(child)
    server.start()
    try:
        text = scrape(server.port)
    finally:
        server.stop()
        REGISTRY.unregister(child)
        JOBS_FINISHED.remove("child-test", "done")
        engine.dispose()
    found = samples(text)
    model = frozenset({("model", "child-test")})
    assert found[("dicom_node_jobs_finished_total", model | {("state", "done")})] == 3.0
    assert found[("dicom_node_inference_seconds_count", model)] == 2.0
    assert found[("dicom_node_inference_seconds_sum", model)] == pytest.approx(7.3)
    assert found[("dicom_node_inference_seconds_bucket", model | {("le", "0.5")})] == 1.0
    assert found[("dicom_node_inference_seconds_bucket", model | {("le", "+Inf")})] == 2.0
    assert ("dicom_node_queue_depth", frozenset()) in found


def test_same_named_families_merge_series_by_series() -> None:
    parent = CounterMetricFamily("demo_jobs", "Jobs", labels=["model"])
    parent.add_metric(["a"], 1, created=100.0)
    child = CounterMetricFamily("demo_jobs", "Jobs", labels=["model"])
    child.add_metric(["a"], 2, created=50.0)
    child.add_metric(["b"], 5)
    (merged,) = merge_families([parent, child])
    values = {(s.name, s.labels["model"]): s.value for s in merged.samples}
    assert values == {
        ("demo_jobs_total", "a"): 3,
        ("demo_jobs_created", "a"): 50.0,  # the earliest start
        ("demo_jobs_total", "b"): 5,
    }


def child_metrics_folder(parent: int) -> Path | None:
    """The metrics folder in the environment of ``parent``'s inference child, if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            environ = (entry / "environ").read_bytes().decode().split("\0")
        except OSError:
            continue
        for variable in environ:
            name, _, value = variable.partition("=")
            if name == MULTIPROCESS_DIR_VARIABLE:
                return Path(value)
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_a_job_run_in_the_inference_child_shows_on_the_nodes_metrics(tmp_path: Path) -> None:
    port, metrics_port = get_free_port(), get_free_port()
    files = ct_series(tmp_path / "ct", 3)
    with run_archive("ARCHIVE") as archive:
        peer = {"name": "pacs", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port}
        document = node_document(
            tmp_path,
            pacs=None,
            port=port,
            peers=[peer],
            worker={"count": 1, "poll_seconds": 0.2, "own_process": True},
            metrics={"enabled": True, "port": metrics_port},
        )
        with run_node(write_config(tmp_path / "node.toml", document), port=port) as node:
            target = PeerConfig(name="node", ae_title="AINODE", host="127.0.0.1", port=port)
            assert all(s.ok for s in send_files(LocalAE("TESTSCU"), target, files))
            wait_until(lambda: "result delivered" in node.log_text(), 120, node.log_text)
            text = scrape(metrics_port)
            assert node.process is not None
            folder = child_metrics_folder(node.process.pid)
    found = samples(text)
    model = frozenset({("model", "demo-ct-bone")})
    assert found[("dicom_node_instances_received_total", frozenset())] == 3.0  # the parent's
    assert found[("dicom_node_inference_seconds_count", model)] == 1.0  # the child's
    assert found[("dicom_node_jobs_finished_total", model | {("state", "done")})] == 1.0
    sent = found[("dicom_node_deliveries_sent_total", frozenset({("peer", "pacs")}))]
    assert sent >= 1 and archive.receipts
    assert found[("dicom_node_jobs", model | {("state", "done")})] == 1.0
    assert folder is not None and not folder.exists()  # private to the run, removed with it
