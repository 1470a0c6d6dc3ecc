"""Databases and rows for the orchestration tests: SQLite files and throw-away PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig, parse_config
from dicom_node.db.schema import Base, Instance, Series, Study, StudyState, utcnow
from dicom_node.db.sessions import create_db_engine, session_factory
from tests.peers import Orthanc, have_dicomweb_plugin, run_orthanc

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:  # any failure means: no server to test against
        return False
    return True


def create_postgres_database() -> tuple[str, Engine]:
    """A uniquely named database; returns its URL and the admin engine to drop it with."""
    name = f"dicom_node_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", admin


def drop_postgres_database(url: str, admin: Engine) -> None:
    name = url.rsplit("/", 1)[1]
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database, dropped on exit; skips without a server."""
    if not postgres_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    url, admin = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url, admin)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test run, dropped at the end."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The run's PostgreSQL database with the node's tables empty (ids restart at 1)."""
    engine = create_db_engine(postgres_database)
    try:
        with engine.begin() as connection:
            tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own (for tests that alter tables), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def web_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin (at ``pacs.dicomweb_url``); skipped without it."""
    if not have_dicomweb_plugin():
        pytest.skip("Orthanc's DICOMweb plugin is not installed")
    with run_orthanc(tmp_path, dicomweb=True) as pacs:
        yield pacs


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def make_config(tmp_path: Path, **sections: Any) -> NodeConfig:
    """A config with two peers and two models; ``sections`` replace whole sections."""
    data: dict[str, Any] = {
        "node": {"storage_dir": str(tmp_path / "spool"), "database_url": "sqlite:///:memory:"},
        "peers": [
            {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
            {"name": "modality", "ae_title": "CTSCANNER", "host": "127.0.0.1", "port": 4243},
        ],
        "models": [
            {"name": "ct-model", "path": str(tmp_path / "ct-model")},
            {"name": "cr-model", "path": str(tmp_path / "cr-model")},
        ],
        "routes": [
            {
                "name": "ct",
                "models": ["ct-model"],
                "match": {"Modality": "CT"},
                "destinations": ["pacs"],
            }
        ],
    }
    data.update(sections)
    return parse_config(data, "test", tmp_path)


def add_study(
    session: Session,
    study_uid: str,
    series: list[dict[str, Any]],
    *,
    calling_ae: str | None = "ORTHANC",
    state: StudyState = StudyState.COMPLETE,
    generation: int = 0,
    spool: Path | None = None,
) -> Study:
    """A study with its series and instance rows, as the listener would have written them.

    Each series dict may hold ``uid``, ``modality``, ``description``, ``number``,
    ``routing_fields``, ``sop_class`` and ``instances`` (a count, or a list of file paths).
    """
    now = utcnow()
    study = Study(
        study_instance_uid=study_uid,
        calling_ae_title=calling_ae,
        state=state,
        generation=generation,
        completed_at=now if state != StudyState.RECEIVING else None,
        study_description="CHEST CT",
    )
    session.add(study)
    session.flush()
    for index, spec in enumerate(series):
        instances = spec.get("instances", 1)
        paths = instances if isinstance(instances, list) else [None] * instances
        default_uid = (
            str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
            if paths and paths[0]
            else f"{study_uid}.{index + 1}"
        )
        row = Series(
            study_id=study.id,
            series_instance_uid=spec.get("uid", default_uid),
            modality=spec.get("modality", "CT"),
            series_number=spec.get("number", index + 1),
            series_description=spec.get("description"),
            routing_fields=spec.get("routing_fields", {}),
        )
        session.add(row)
        session.flush()
        for number, path in enumerate(paths, start=1):
            sop_uid = (
                str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                if path
                else f"{row.series_instance_uid}.{number}"
            )
            session.add(
                Instance(
                    series_id=row.id,
                    study_id=study.id,
                    sop_instance_uid=sop_uid,
                    sop_class_uid=spec.get("sop_class", "1.2.840.10008.5.1.4.1.1.2"),
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    instance_number=number,
                    path=str(path or (spool or Path("/nonexistent")) / f"{number}.dcm"),
                    size_bytes=1,
                    calling_ae_title=calling_ae,
                )
            )
        row.instance_count = len(paths)
        study.instance_count += len(paths)
    session.flush()
    return study
