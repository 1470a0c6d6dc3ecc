"""Scale-out on PostgreSQL: separate listener and worker processes, several workers.

50 complete studies are routed into 50 jobs in a fresh database; three worker
processes claim them with ``SELECT ... FOR UPDATE SKIP LOCKED`` and deliver the
results to one archive. Every job must run exactly once (one attempt, one "job
started" line in all the logs together) and every result must arrive exactly once.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.config import parse_config
from dicom_node.db.schema import Delivery, Job, WorkState
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work.routing import route_complete_studies
from tests.conftest import get_free_port
from tests.orchestration.archive import run_archive
from tests.orchestration.conftest import add_study
from tests.orchestration.node import MODELS, node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import series_by_modality
from tests.orchestration.studies import ct_series
from tests.peers import have_orthanc, run_orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 50
WORKERS = 3
STARTED = re.compile(r"job started .*job_id=(\d+)")


def test_three_worker_processes_run_each_of_50_jobs_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = create_db_engine(postgres_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:  # what the listener would have recorded
        for n in range(JOBS):
            files = ct_series(tmp_path / "spool" / f"s{n}", 1)
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            add_study(session, study_uid, [{"modality": "CT", "instances": files}])
    model = {"name": "ct-model", "path": MODELS / "demo-ct-bone", "backend": "onnxruntime"}
    route = {
        "name": "ct",
        "models": ["ct-model"],
        "match": {"Modality": "CT"},
        "destinations": ["pacs"],
    }
    with run_archive("ARCHIVE") as archive, ExitStack() as stack:
        peer = {"name": "pacs", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port}
        document = node_document(
            tmp_path,
            pacs=None,
            database_url=postgres_url,
            peers=[peer],
            models=[model],
            routes=[route],
            worker={"count": 1, "poll_seconds": 0.1, "intra_op_threads": 1},
        )
        # The listener process would route; here the test does, before the workers start.
        assert route_complete_studies(sessions, parse_config(document, "test", tmp_path)) == JOBS
        workers = [
            stack.enter_context(
                run_node(write_config(tmp_path / f"worker{i}.toml", document), role="worker")
            )
            for i in range(WORKERS)
        ]

        def drained() -> bool:
            with sessions() as session:
                jobs = session.scalars(select(Job)).all()
                deliveries = session.scalars(select(Delivery)).all()
            return (
                all(j.state == WorkState.DONE for j in jobs)
                and len(deliveries) >= JOBS
                and all(d.state == WorkState.DONE for d in deliveries)
            )

        wait_until(
            drained, 300, lambda: "\n".join(w.log_text()[-2000:] for w in workers), interval=0.5
        )
        started = Counter(m.group(1) for w in workers for m in STARTED.finditer(w.log_text()))
        per_process = [len(STARTED.findall(w.log_text())) for w in workers]
        receipts = Counter(archive.receipts)
    with sessions() as session:
        jobs = session.scalars(select(Job)).all()
        deliveries = session.scalars(select(Delivery)).all()
    engine.dispose()
    assert len(jobs) == JOBS and {j.attempts for j in jobs} == {1}
    assert len(started) == JOBS and set(started.values()) == {1}, started
    assert sum(1 for n in per_process if n) >= 2, per_process  # the work was shared
    assert sorted(receipts) == sorted(d.sop_instance_uid for d in deliveries)
    assert set(receipts.values()) == {1}, receipts


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


@pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")
def test_listener_and_worker_processes_share_database_and_spool(
    postgres_url: str, tmp_path: Path
) -> None:
    port, listener_metrics, worker_metrics = get_free_port(), get_free_port(), get_free_port()
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        document = node_document(tmp_path, pacs=pacs, port=port, database_url=postgres_url)
        listener_config = write_config(
            tmp_path / "listener.toml",
            {**document, "metrics": {"enabled": True, "port": listener_metrics}},
        )
        worker_config = write_config(
            tmp_path / "worker.toml",
            {**document, "metrics": {"enabled": True, "port": worker_metrics}},
        )
        files = ct_series(tmp_path / "ct", 3)
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        with (
            run_node(listener_config, role="listener", port=port) as listener,
            run_node(worker_config, role="worker") as worker,
        ):
            pacs.store("node", pacs.upload(files))
            wait_until(
                lambda: "SR" in series_by_modality(pacs, study_uid),
                120,
                lambda: f"listener:\n{listener.log_text()}\nworker:\n{worker.log_text()}",
            )
            wait_until(lambda: "result delivered" in worker.log_text(), 30, worker.log_text)
            listener_log, worker_log = listener.log_text(), worker.log_text()
            on_listener, on_worker = scrape(listener_metrics), scrape(worker_metrics)
    assert "study routed" in listener_log and "job started" not in listener_log
    assert "job done" in worker_log and "result delivered" in worker_log
    assert "study routed" not in worker_log and "dicom_node.net.scp listening" not in worker_log
    # Counters count what each process did; queue gauges are read from the shared database.
    assert "dicom_node_instances_received_total 3.0" in on_listener
    assert "dicom_node_studies_completed_total 1.0" in on_listener
    assert 'dicom_node_inference_seconds_count{model="demo-ct-bone"} 1.0' in on_worker
    assert 'dicom_node_deliveries_sent_total{peer="pacs"}' in on_worker
    for text in (on_listener, on_worker):
        assert 'dicom_node_jobs{model="demo-ct-bone",state="done"} 1.0' in text
        assert "dicom_node_queue_depth 0.0" in text
