"""kill -9 of ``dicom-node serve`` while a result is on the wire to the archive.

The archive (a pynetdicom SCP in the test) stores the first result and then holds its
answer; the node is killed while it waits. After a restart the delivery left RUNNING
by the dead process is requeued at once (its owner is provably gone) and every result
ends up in the archive: the one in flight may be stored a second time (same SOP
Instance UID, so the archive replaces it), nothing is lost and nothing else repeats.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.config import PeerConfig
from dicom_node.db.schema import Delivery, Job, WorkState
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.net.scu import LocalAE, send_files
from tests.conftest import get_free_port
from tests.orchestration.archive import run_archive
from tests.orchestration.node import NodeProcess, node_document, run_node, wait_until, write_config
from tests.orchestration.studies import ct_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def deliveries(url: str) -> list[Delivery]:
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(Delivery)))
    finally:
        engine.dispose()


def all_results_delivered(url: str, jobs: int) -> bool:
    """Every job is done and every delivery it created is done.

    The number of result objects per job depends on what the model finds (SR alone, or
    SR and SEG), so the test waits for the jobs, not for a count of deliveries.
    """
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            done = session.scalars(select(Job).where(Job.state == WorkState.DONE)).all()
            rows = session.scalars(select(Delivery)).all()
    finally:
        engine.dispose()
    return len(done) == jobs and bool(rows) and all(d.state == WorkState.DONE for d in rows)


def test_kill_9_mid_delivery_every_result_arrives(tmp_path: Path) -> None:
    port = get_free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    studies = [ct_series(tmp_path / f"ct{n}", 2) for n in range(2)]
    with run_archive("ARCHIVE") as archive:
        archive.gate.clear()  # hold the first C-STORE
        peer = {"name": "pacs", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port}
        document = node_document(tmp_path, pacs=None, port=port, database_url=url, peers=[peer])
        config = write_config(tmp_path / "node.toml", document)
        node = NodeProcess(config, "all", tmp_path / "first.log", port)
        node.start()
        try:
            target = PeerConfig(name="node", ae_title="AINODE", host="127.0.0.1", port=port)
            for files in studies:
                assert all(s.ok for s in send_files(LocalAE("TESTSCU"), target, files))
            assert archive.waiting.wait(120), node.log_text()
        finally:
            node.kill()
        in_flight = [d for d in deliveries(url) if d.state == WorkState.RUNNING]
        assert len(in_flight) >= 1
        archive.gate.set()
        with run_node(config, port=port) as again:
            wait_until(
                lambda: all_results_delivered(url, jobs=len(studies)),
                120,
                lambda: again.log_text(),
            )
            log = again.log_text()
    assert "deliveries requeued" in log or "recovered work of a stopped process" in log
    rows = deliveries(url)
    assert set(archive.receipts) == {d.sop_instance_uid for d in rows}
    resent = {uid for uid, n in archive.receipts.items() if n > 1}
    assert resent <= {d.sop_instance_uid for d in in_flight}  # only what was on the wire
    assert max(archive.receipts.values()) <= 2
    study_uids = {
        str(pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID) for f in studies
    }
    assert len(study_uids) == 2
