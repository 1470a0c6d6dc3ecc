"""Retention of spooled instances and results, and the Prometheus endpoint."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import MetricsSection, NodeConfig
from dicom_node.db.schema import Delivery, Instance, Job, WorkState
from dicom_node.metrics import MetricsServer
from dicom_node.work.retention import apply_retention
from dicom_node.work.routing import route_complete_studies
from tests.conftest import get_free_port
from tests.orchestration.conftest import add_study, make_config
from tests.orchestration.studies import ct_series


def spooled_study(
    sessions: sessionmaker[Session],
    config: NodeConfig,
    job_state: WorkState,
    delivery_state: WorkState,
) -> tuple[list[Path], Path]:
    """A routed study with spooled files, its job in ``job_state`` with one delivery."""
    files = ct_series(config.node.storage_dir / "instances" / "study" / "series", 2)
    with sessions.begin() as session:
        add_study(session, "1.2.840.99", [{"modality": "CT", "instances": files}])
    route_complete_studies(sessions, config)
    outbox = config.node.storage_dir / "outbox"
    with sessions.begin() as session:
        job = session.scalars(select(Job)).one()
        job.state = job_state
        result = outbox / str(job.id) / "result.dcm"
        result.parent.mkdir(parents=True)
        result.write_bytes(files[0].read_bytes())
        session.add(
            Delivery(
                job_id=job.id,
                peer_name="pacs",
                sop_instance_uid="1.2.3.4",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                path=str(result),
                state=delivery_state,
            )
        )
    return files, result


def instance_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def config_with(tmp_path: Path, **retention: Any) -> NodeConfig:
    return make_config(
        tmp_path,
        node={"storage_dir": str(tmp_path / "storage"), "database_url": "sqlite://"},
        retention=retention,
    )


def test_nothing_is_removed_before_its_time(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = config_with(tmp_path, keep_hours=72, delete_when_done=False)
    files, result = spooled_study(sessions, config, WorkState.DONE, WorkState.DONE)
    report = apply_retention(sessions, config)
    assert (report.instances, report.outboxes) == (0, 0)
    assert all(f.exists() for f in files) and result.exists()


def test_done_work_is_removed_at_once_with_delete_when_done(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = config_with(tmp_path, keep_hours=72, delete_when_done=True)
    files, result = spooled_study(sessions, config, WorkState.DONE, WorkState.DONE)
    report = apply_retention(sessions, config)
    assert (report.instances, report.outboxes) == (2, 1) and report.bytes > 0
    assert not any(f.exists() for f in files) and not result.exists()
    assert not (config.node.storage_dir / "instances" / "study").exists()  # empty folders go
    assert instance_rows(sessions) == 0
    with sessions() as session:  # the record stays for status
        assert session.scalars(select(Job)).one().state == WorkState.DONE


@pytest.mark.parametrize(
    ("job_state", "delivery_state"),
    [(WorkState.RUNNING, WorkState.QUEUED), (WorkState.DONE, WorkState.WAITING_COMMITMENT)],
)
def test_work_in_progress_is_never_removed(
    sessions: sessionmaker[Session], tmp_path: Path, job_state: WorkState, delivery_state: WorkState
) -> None:
    config = config_with(tmp_path, keep_hours=0, delete_when_done=True)
    files, result = spooled_study(sessions, config, job_state, delivery_state)
    report = apply_retention(sessions, config)
    assert (report.instances, report.outboxes) == (0, 0)
    assert all(f.exists() for f in files) and result.exists()


def test_failed_work_is_kept_for_retry_until_it_ages_out(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = config_with(tmp_path, keep_hours=72, delete_when_done=True)
    files, result = spooled_study(sessions, config, WorkState.FAILED, WorkState.FAILED)
    assert apply_retention(sessions, config).instances == 0
    assert all(f.exists() for f in files) and result.exists()
    aged = config_with(tmp_path, keep_hours=0, delete_when_done=True)
    report = apply_retention(sessions, aged)
    assert (report.instances, report.outboxes) == (2, 1)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_metrics_endpoint_reports_queue_and_counters(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    server = MetricsServer(
        MetricsSection(enabled=True, port=get_free_port()), sessions, CollectorRegistry()
    )
    server.start()
    try:
        # dicom_node_instances_received is counted by the listener: test_scale_out.
        with sessions.begin() as session:
            for n in range(2):
                add_study(session, f"1.7.{n}", [{"modality": "CT", "instances": 3}])
        route_complete_studies(sessions, config)
        text = scrape(server.port)
    finally:
        server.stop()
    assert 'dicom_node_jobs{model="ct-model",state="queued"} 2.0' in text
    assert "dicom_node_queue_depth 2.0" in text
    assert "dicom_node_oldest_queued_job_age_seconds " in text
    assert "dicom_node_deliveries" in text
