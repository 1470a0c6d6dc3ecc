"""End to end with a real PACS: Orthanc sends studies, the node sends results back.

Orthanc runs on loopback ports with its own temp config; the node runs as
``dicom-node serve`` in a subprocess with the demo models on ONNX Runtime (CPU), so
that tests can stop Orthanc (an archive outage) or kill the node with SIGKILL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.db.schema import Delivery, Job, WorkState
from dicom_node.db.sessions import create_db_engine, session_factory
from tests.conftest import REPO_ROOT, get_free_port
from tests.orchestration.node import (
    NodeProcess,
    node_document,
    run_node,
    wait_until,
    write_config,
)
from tests.orchestration.pacs import (
    dciodvfy_errors,
    instance,
    outage,
    referenced_series,
    series_by_modality,
)
from tests.orchestration.studies import ct_series, radiograph
from tests.peers import Orthanc, have_orthanc, run_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed"),
]

RESULT_TIMEOUT_S = 120.0
RESULT_MODALITIES = ("SR", "SEG", "OT")
DELIVERED = re.compile(r"result delivered .*sop_uid=(\S+)")


@dataclass
class Setup:
    pacs: Orthanc
    config: Path
    port: int
    workdir: Path
    database_url: str


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """Orthanc knowing the node as modality ``node``, and the node's config file."""
    port = get_free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        document = node_document(tmp_path, pacs=pacs, port=port, database_url=url)
        config = write_config(tmp_path / "node.toml", document)
        yield Setup(pacs, config, port, tmp_path, url)


def uids(path: Path) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a file."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)


def status(config: Path) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "dicom_node", "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def results(pacs: Orthanc, study_uid: str) -> Counter[str]:
    """Result instances of a study in Orthanc, counted by modality."""
    found = series_by_modality(pacs, study_uid)
    return Counter({m: len(found[m]) for m in RESULT_MODALITIES if m in found})


def rows(url: str) -> tuple[list[Job], list[Delivery]]:
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(Job))), list(session.scalars(select(Delivery)))
    finally:
        engine.dispose()


def delivered_once(*nodes: NodeProcess) -> Counter[str]:
    """How often the node logs said each result SOP instance was stored at the PACS."""
    return Counter(m.group(1) for node in nodes for m in DELIVERED.finditer(node.log_text()))


def test_studies_come_back_as_sr_seg_and_heatmap(setup: Setup) -> None:
    pacs = setup.pacs
    ct = ct_series(setup.workdir / "ct", 6, template="693_UNCI.dcm")
    cr = radiograph(setup.workdir / "cr")
    (ct_study, ct_source), (cr_study, cr_source) = uids(ct[0]), uids(cr)
    with run_node(setup.config, port=setup.port) as node:
        pacs.store("node", pacs.upload([*ct, cr]))
        wait_until(
            lambda: (
                {"SR", "SEG"} <= set(results(pacs, ct_study))
                and {"SR", "OT"} <= set(results(pacs, cr_study))
            ),
            RESULT_TIMEOUT_S,
            lambda: f"SR+SEG (CT) and SR+heatmap (CR) in Orthanc; node log:\n{node.log_text()}",
        )
        report = status(setup.config)
        log = node.log_text()
    assert report["jobs"]["done"] == 2 and report["jobs"]["failed"] == 0
    assert report["deliveries"]["failed"] == 0
    assert " ERROR " not in log, log
    for study_uid, source_series in ((ct_study, ct_source), (cr_study, cr_source)):
        found = series_by_modality(pacs, study_uid)
        for modality in RESULT_MODALITIES:
            for instance_id in found.get(modality, []):
                path, dataset = instance(pacs, instance_id, setup.workdir / "results")
                assert dataset.StudyInstanceUID == study_uid  # in the study of its sources
                if modality in ("SR", "SEG"):
                    assert source_series in referenced_series(dataset), modality
                assert dciodvfy_errors(path) == [], (modality, dciodvfy_errors(path))


def test_archive_outage_everything_arrives_exactly_once(setup: Setup) -> None:
    pacs = setup.pacs
    studies = [ct_series(setup.workdir / f"ct{n}", 3) for n in range(2)]
    study_uids = [uids(files[0])[0] for files in studies]
    with run_node(setup.config, port=setup.port) as node:
        pacs.store("node", pacs.upload([f for files in studies for f in files]))
        with outage(pacs) as restart:
            # Results fall due while the archive is down: each is tried and retried.
            wait_until(
                lambda: (
                    (d := rows(setup.database_url)[1])
                    and all(x.attempts >= 2 and x.state == WorkState.QUEUED for x in d)
                ),
                RESULT_TIMEOUT_S,
                lambda: f"deliveries retried during the outage; log:\n{node.log_text()}",
            )
            _, waiting = rows(setup.database_url)
            assert all(d.error and d.error.startswith("transient: ") for d in waiting)
            restart()
            wait_until(
                lambda: all(d.state == WorkState.DONE for d in rows(setup.database_url)[1]),
                RESULT_TIMEOUT_S,
                lambda: f"deliveries done after the outage; log:\n{node.log_text()}",
            )
            sent = delivered_once(node)
            in_pacs = [results(pacs, study_uid) for study_uid in study_uids]
    _, deliveries = rows(setup.database_url)
    assert sorted(sent) == sorted(d.sop_instance_uid for d in deliveries)
    assert set(sent.values()) == {1}, sent  # each object stored exactly once
    assert all(found["SR"] == 1 for found in in_pacs), in_pacs


def test_kill_9_mid_inference_results_arrive_exactly_once(setup: Setup) -> None:
    pacs = setup.pacs
    files = ct_series(setup.workdir / "ct", 30, template="693_UNCI.dcm")
    study_uid, _ = uids(files[0])
    node = NodeProcess(setup.config, "all", setup.workdir / "first.log", setup.port)
    node.start()
    try:
        pacs.store("node", pacs.upload(files))
        wait_until(
            lambda: any(j.state == WorkState.RUNNING for j in rows(setup.database_url)[0]),
            RESULT_TIMEOUT_S,
            lambda: f"job running; log:\n{node.log_text()}",
            interval=0.02,
        )
    finally:
        node.kill()
    (job,), deliveries = rows(setup.database_url)
    assert job.state == WorkState.RUNNING and deliveries == []
    with run_node(setup.config, port=setup.port) as again:
        wait_until(
            lambda: (
                (d := rows(setup.database_url)[1]) and all(x.state == WorkState.DONE for x in d)
            ),
            RESULT_TIMEOUT_S,
            lambda: f"results delivered after restart; log:\n{again.log_text()}",
        )
        sent = delivered_once(node, again)
    (job,), deliveries = rows(setup.database_url)
    assert job.state == WorkState.DONE and job.attempts == 2  # the killed run counts
    assert "job requeued" in again.log_text()
    assert set(sent.values()) == {1} and len(sent) == len(deliveries)
    assert results(pacs, study_uid)["SR"] == 1


def test_storage_commitment_marks_deliveries_done_when_orthanc_commits(tmp_path: Path) -> None:
    port = get_free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        peer = {
            "name": "pacs",
            "ae_title": pacs.aet,
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "storage_commitment": True,
        }
        document = node_document(tmp_path, pacs=pacs, port=port, database_url=url, peers=[peer])
        config = write_config(tmp_path / "node.toml", document)
        files = ct_series(tmp_path / "ct", 2)
        with run_node(config, port=port) as node:
            pacs.store("node", pacs.upload(files))
            wait_until(
                lambda: (d := rows(url)[1]) and all(x.state == WorkState.DONE for x in d),
                RESULT_TIMEOUT_S,
                lambda: f"deliveries committed; log:\n{node.log_text()}",
            )
        # Read the log once the node has stopped: Orthanc's N-EVENT-REPORT can mark the
        # deliveries done before the requester has logged its N-ACTION's answer.
        log = node.log_text()
        study_uid, _ = uids(files[0])
        assert results(pacs, study_uid)["SR"] == 1
    _, deliveries = rows(url)
    assert all(d.commitment_transaction_uid for d in deliveries)
    assert "storage commitment requested" in log
    assert re.search(rf"storage commitment report committed={len(deliveries)} failed=0", log), log
