"""``dicom-node serve`` as a process: SIGKILL loses nothing answered Success, SIGTERM
finishes the C-STOREs in flight and exits 0."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from dicom_node.db.schema import Instance, Study
from dicom_node.net.scu import FileStatus, send_files
from tests.node.conftest import SENDER, NodeProcess, wait_for, write_series

pytestmark = pytest.mark.slow

SpawnNode = Callable[..., NodeProcess]


class Sender(threading.Thread):
    """Sends files in one association in the background, recording each outcome."""

    def __init__(self, node: NodeProcess, files: list[Path]) -> None:
        super().__init__(daemon=True)
        self.node, self.files = node, files
        self.results: list[FileStatus] = []

    def run(self) -> None:
        send_files(SENDER, self.node.peer, self.files, progress=self.results.append)

    def succeeded(self) -> list[FileStatus]:
        return [r for r in list(self.results) if r.ok]


def _body(path: Path) -> bytes:
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_sigkill_during_transfer_loses_nothing_answered_success(
    spawn_node: SpawnNode, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "series", 200)
    node = spawn_node(completion={"stable_seconds": 1, "scan_interval_seconds": 0.2})
    sender = Sender(node, files)
    sender.start()
    assert wait_for(lambda: len(sender.succeeded()) >= 60, timeout=60, step=0.005)
    node.process.kill()
    node.process.wait(timeout=10)
    sender.join(timeout=60)
    answered = {r.sop_instance_uid: r.path for r in sender.succeeded()}
    assert 60 <= len(answered) < 200

    restarted = spawn_node(config_path=node.config_path)
    sessions = restarted.sessions()
    with sessions() as session:
        stored = {i.sop_instance_uid: Path(i.path) for i in session.scalars(select(Instance))}
    assert set(answered) <= set(stored)
    for sop_uid, source in answered.items():
        assert _body(stored[sop_uid]) == _body(source)
    incoming = node.config.node.storage_dir / "incoming"
    assert not [p for p in incoming.rglob("*") if p.is_file()]  # the dead one's are gone
    assert [p.name for p in incoming.iterdir()] == [restarted.incoming_name()]

    def complete() -> bool:
        # Routing in the same node may move the study past COMPLETE at once.
        with sessions() as session:
            return session.scalar(select(Study.completed_at)) is not None

    assert wait_for(complete, timeout=30)
    assert restarted.terminate() == 0


def test_sigterm_finishes_in_flight_stores_and_exits_zero(
    spawn_node: SpawnNode, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "series", 30)
    node = spawn_node()
    sender = Sender(node, files)
    sender.start()
    assert wait_for(lambda: len(sender.succeeded()) >= 10, timeout=60, step=0.005)
    assert node.terminate() == 0
    sender.join(timeout=60)
    assert "listener stopped" in node.log()
    answered = {r.sop_instance_uid for r in sender.succeeded()}
    with node.sessions()() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    assert answered <= stored
    assert len(answered) == len(files)  # the open association was allowed to finish
    assert {dcmread(f).SOPInstanceUID for f in files} == stored
