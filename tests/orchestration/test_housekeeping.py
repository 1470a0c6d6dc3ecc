"""Retention of spooled instances and results, and the Prometheus endpoint."""

from __future__ import annotations

import logging
import sqlite3
import urllib.request
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import close_audit_log, open_audit_log, read_audit
from dicom_node.config import AuditSection, MetricsSection, NodeConfig
from dicom_node.db.compaction import compact
from dicom_node.db.schema import (
    Delivery,
    Instance,
    Job,
    Series,
    Study,
    StudyState,
    WorkState,
    utcnow,
)
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.metrics import MetricsServer
from dicom_node.work import row_retention
from dicom_node.work.outbox import Outbox
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
    assert (report.instances, report.outboxes, report.studies) == (0, 0, 0)
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
    assert (report.instances, report.outboxes, report.studies) == (0, 0, 0)
    assert all(f.exists() for f in files) and result.exists()
    assert row_counts(sessions) == {"studies": 1, "series": 1, "instances": 2, "jobs": 1}


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


def row_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Rows per table of a study's life (deliveries counted with their jobs)."""
    tables = {"studies": Study, "series": Series, "instances": Instance, "jobs": Job}
    with sessions() as session:
        return {
            name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for name, table in tables.items()
        }


def test_finished_study_loses_every_row_after_keep_hours(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = config_with(tmp_path, keep_hours=0, delete_when_done=False)
    files, result = spooled_study(sessions, config, WorkState.FAILED, WorkState.DONE)
    settings = AuditSection(dir=tmp_path / "audit")
    handler = open_audit_log(settings, "test")
    try:
        report = apply_retention(sessions, config)
    finally:
        close_audit_log(handler)
    assert (report.instances, report.outboxes, report.studies) == (2, 1, 1)
    assert row_counts(sessions) == {"studies": 0, "series": 0, "instances": 0, "jobs": 0}
    with sessions() as session:
        assert session.scalar(select(func.count(Delivery.id))) == 0
    assert not any(f.exists() for f in files) and not result.exists()
    (removed,) = read_audit(settings.dir)
    assert removed["event"] == "study-removed" and removed["study_uid"] == "1.2.840.99"
    assert (removed["instances"], removed["jobs"]) == (2, 1)
    assert apply_retention(sessions, config).studies == 0


def test_rows_go_in_batches_and_recent_or_receiving_studies_stay(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(row_retention, "BATCH_STUDIES", 2)
    with sessions.begin() as session:
        for number in range(5):  # their spooled instances already removed
            add_study(session, f"1.2.5.{number}", [{"instances": 0}], state=StudyState.ROUTED)
        add_study(session, "1.2.6.1", [{"instances": 0}], state=StudyState.RECEIVING)
        fresh = add_study(session, "1.2.6.2", [{"instances": 0}], state=StudyState.ROUTED)
        fresh.last_received_at = utcnow() + timedelta(hours=1)
        # Its files not removed yet: the rows wait, so that no file outlives its row.
        add_study(session, "1.2.6.3", [{"instances": 1}], state=StudyState.ROUTED)
    assert row_retention.forget_finished_studies(sessions, keep_hours=0) == 5
    with sessions() as session:
        left = set(session.scalars(select(Study.study_instance_uid)))
    assert left == {"1.2.6.1", "1.2.6.2", "1.2.6.3"}


def test_a_forgotten_jobs_id_is_never_given_to_a_new_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with sessions.begin() as session:
        add_study(session, "1.2.9.1", [{"modality": "CT"}])
    assert route_complete_studies(sessions, config) == 1
    with sessions.begin() as session:
        [forgotten] = session.scalars(select(Job.id)).all()
        session.execute(delete(Job))  # as retention does once every study is forgotten
        add_study(session, "1.2.9.2", [{"modality": "CT"}])
    assert route_complete_studies(sessions, config) == 1
    with sessions() as session:
        [new] = session.scalars(select(Job.id)).all()
    assert new > forgotten


def test_outbox_of_a_job_forgotten_before_its_outbox_was_due_is_removed(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    outbox = Outbox(config.node.storage_dir)
    (outbox.job_dir(41) / "result.dcm").parent.mkdir(parents=True)
    (outbox.job_dir(41) / "result.dcm").write_bytes(b"left over")  # no job 41 row

    assert apply_retention(sessions, config).outboxes == 1
    assert not outbox.job_dir(41).exists()


def test_sqlite_gives_freed_pages_back(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'node.db'}")
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            for number in range(300):
                add_study(session, f"1.2.7.{number}", [{"instances": 5}], state=StudyState.ROUTED)
            session.flush()
            session.execute(delete(Instance))  # retention removed their files
        with sessions() as session:
            assert session.connection().exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
        assert row_retention.forget_finished_studies(sessions, keep_hours=0) == 300
        with sessions() as session:
            freed = session.connection().exec_driver_sql("PRAGMA freelist_count").scalar()
        compact(sessions)
        with sessions() as session:
            left = session.connection().exec_driver_sql("PRAGMA freelist_count").scalar()
        assert freed and freed > 10 and left == 0
        assert (tmp_path / "node.db-wal").stat().st_size == 0
    finally:
        engine.dispose()


def test_a_database_created_without_incremental_vacuum_is_switched_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as old:  # a node before auto_vacuum=INCREMENTAL
        old.execute("CREATE TABLE older_version (x INTEGER)")
    engine = create_db_engine(f"sqlite:///{path}")
    sessions = session_factory(engine)

    def pragma(name: str) -> int:
        with sessions() as session:
            return int(session.connection().exec_driver_sql(f"PRAGMA {name}").scalar() or 0)

    try:
        with sessions.begin() as session:
            for number in range(200):
                add_study(session, f"1.2.8.{number}", [{"instances": 5}], state=StudyState.ROUTED)
            session.flush()
            session.execute(delete(Instance))  # retention removed their files
        assert pragma("auto_vacuum") == 0
        assert row_retention.forget_finished_studies(sessions, keep_hours=0) == 200
        with caplog.at_level(logging.INFO, logger="dicom_node.db.compaction"):
            compact(sessions)
            compact(sessions)
        assert pragma("auto_vacuum") == 2 and pragma("freelist_count") == 0
        [switched] = [r for r in caplog.records if "incremental vacuum" in r.getMessage()]
        assert switched.bytes_after < switched.bytes_before  # type: ignore[attr-defined]
    finally:
        engine.dispose()


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
