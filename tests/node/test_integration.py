"""The listener against real peers: DCMTK echoscu/storescu, Orthanc storing and answering
C-FIND for evidence-based completion."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from dicom_node.db.schema import Instance, Study, StudyState
from tests.conftest import get_free_port
from tests.node.conftest import NODE_AET, RunningNode, rows, scalar, wait_for, write_series
from tests.peers import have_dcmtk, have_orthanc, run_orthanc

pytestmark = pytest.mark.integration

StartNode = Callable[..., RunningNode]
needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK is not installed")
needs_orthanc = pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")


@needs_dcmtk
def test_dcmtk_echoscu_and_storescu(start_node: StartNode, tmp_path: Path) -> None:
    node = start_node()
    port = str(node.config.node.port)
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "ECHOSCU", "-aec", NODE_AET, "127.0.0.1", port],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    files = write_series(tmp_path / "series", 5)
    store = subprocess.run(
        ["/usr/bin/storescu", "-aet", "STORESCU", "-aec", NODE_AET, "127.0.0.1", port]
        + [str(f) for f in files],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert store.returncode == 0, store.stderr
    stored = {i.sop_instance_uid: i for i in rows(node.sessions, select(Instance))}
    assert set(stored) == {dcmread(f).SOPInstanceUID for f in files}
    assert {i.calling_ae_title for i in stored.values()} == {"STORESCU"}


@needs_dcmtk
def test_dcmtk_echoscu_with_a_calling_ae_not_allowed(start_node: StartNode) -> None:
    node = start_node()
    port = str(node.config.node.port)
    result = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "STRANGER", "-aec", NODE_AET, "127.0.0.1", port],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "Rejected" in result.stderr or "rejected" in result.stderr


@needs_orthanc
def test_orthanc_sends_a_study_through_its_rest_api(start_node: StartNode, tmp_path: Path) -> None:
    node_port = get_free_port()
    files = write_series(tmp_path / "series", 10)
    with run_orthanc(tmp_path, modalities={"node": (NODE_AET, "127.0.0.1", node_port)}) as pacs:
        node = start_node(node={"port": node_port})
        pacs.upload(files)
        [study_id] = pacs.study_ids()
        answer = pacs.store("node", [study_id])
    assert answer["InstancesCount"] == 10
    assert answer["FailedInstancesCount"] == 0
    assert scalar(node.sessions, select(func.count(Instance.id))) == 10
    assert scalar(node.sessions, select(Study.calling_ae_title)) == "ORTHANC"


@needs_orthanc
def test_completion_by_orthanc_c_find_counts(start_node: StartNode, tmp_path: Path) -> None:
    node_port = get_free_port()
    files = write_series(tmp_path / "series", 3)
    with run_orthanc(tmp_path, modalities={"node": (NODE_AET, "127.0.0.1", node_port)}) as pacs:
        peer = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        node = start_node(
            node={"port": node_port},
            peers=[peer],
            completion={
                "query_peer": "pacs",
                "stable_seconds": 3600,
                "min_seconds": 0,
                "max_seconds": 3600,
                "scan_interval_seconds": 0.2,
            },
        )
        ids = pacs.upload(files)
        pacs.store("node", ids[:2])

        def expected_known() -> bool:
            return scalar(node.sessions, select(Study.expected_instances)) == 3

        assert wait_for(expected_known, timeout=20)
        assert scalar(node.sessions, select(Study.state)) == StudyState.RECEIVING
        pacs.store("node", ids[2:])

        def complete() -> bool:
            # Routing (same process, same scan interval) may move COMPLETE on at once.
            return scalar(node.sessions, select(Study.completed_at)) is not None

        assert wait_for(complete, timeout=20)
    assert scalar(node.sessions, select(Study.completion_reason)) == "C-FIND counts match 3/3"
