"""The same listener and completion code on PostgreSQL, with concurrent associations
creating the same study at once (the insert race the catalog retries)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from dicom_node.db.schema import Instance, Series, Study, StudyState
from dicom_node.intake.completion import CompletionScanner
from dicom_node.net.scu import FileStatus, send_files
from tests.node.conftest import SENDER, RunningNode, rows, scalar, write_series

pytestmark = pytest.mark.integration

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    admin = create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    name = f"node_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc.orig}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_listener_and_completion_on_postgresql(
    start_node: Callable[..., RunningNode], postgres_url: str, tmp_path: Path
) -> None:
    node = start_node(node={"database_url": postgres_url})
    files = write_series(tmp_path / "series", 12)
    results: list[FileStatus] = []
    # Four associations at once, all opening the same new study and series.
    senders = [
        threading.Thread(
            target=lambda part=part: results.extend(send_files(SENDER, node.peer, part))
        )
        for part in (files[0::4], files[1::4], files[2::4], files[3::4])
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    assert sorted(r.status for r in results) == [0] * 12
    assert scalar(node.sessions, select(func.count(Instance.id))) == 12
    [study] = rows(node.sessions, select(Study))
    [series] = rows(node.sessions, select(Series))
    assert (study.instance_count, series.instance_count) == (12, 12)

    scanner = CompletionScanner(
        node.sessions, node.config.completion.model_copy(update={"stable_seconds": 0})
    )
    [decision] = scanner.scan()
    assert decision.reason == "quiet for 0 s"
    assert scalar(node.sessions, select(Study.state)) == StudyState.COMPLETE
