"""QIDO-RS counts for completion and WADO-RS retrieval, against Orthanc's DICOMweb plugin."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cli import main
from dicom_node.config import CompletionSection, DicomwebPeerConfig
from dicom_node.db.schema import Study, StudyState, utcnow
from dicom_node.intake.completion import CompletionScanner
from dicom_node.net.dicomweb_auth import DicomwebConnector, DicomwebError
from dicom_node.net.dicomweb_query import find_study_counts
from dicom_node.net.dicomweb_retrieve import retrieve_study
from tests.conftest import get_free_port
from tests.orchestration.conftest import add_study
from tests.orchestration.node import write_config
from tests.orchestration.studies import ct_series
from tests.orchestration.web_archive import Answer, run_web_archive
from tests.peers import Orthanc

pytestmark = pytest.mark.integration


def connector(url: str) -> DicomwebConnector:
    return DicomwebConnector(DicomwebPeerConfig(kind="dicomweb", name="pacs", url=url))


def test_qido_counts_per_study_and_series(web_pacs: Orthanc, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", 3)
    web_pacs.upload(files)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    counts = find_study_counts(connector(web_pacs.dicomweb_url), [study_uid, "1.2.3.999"])
    assert set(counts) == {study_uid}  # a study the archive does not know is left out
    assert counts[study_uid].instances == 3
    assert counts[study_uid].series == {series_uid: 3}


@pytest.mark.parametrize(("held", "decided"), [(2, []), (3, ["QIDO-RS counts match 3/3"])])
def test_completion_by_qido_counts(
    web_pacs: Orthanc,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    held: int,
    decided: list[str],
) -> None:
    files = ct_series(tmp_path / "ct", 3)
    web_pacs.upload(files)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    with sessions.begin() as session:
        add_study(session, study_uid, [{"instances": files[:held]}], state=StudyState.RECEIVING)
        session.execute(update(Study).values(last_received_at=utcnow()))
    settings = CompletionSection(stable_seconds=3600, min_seconds=0, max_seconds=3600)
    counts = functools.partial(find_study_counts, connector(web_pacs.dicomweb_url))
    scanner = CompletionScanner(sessions, settings, counts, evidence="QIDO-RS")
    assert [d.reason for d in scanner.scan()] == decided
    with sessions() as session:
        assert session.scalar(select(Study.expected_instances)) == 3


def test_unreachable_query_peer_leaves_the_quiet_timer_in_charge(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        add_study(session, "1.2.3", [{"instances": 1}], state=StudyState.RECEIVING)
    settings = CompletionSection(stable_seconds=0, min_seconds=0)
    url = f"http://127.0.0.1:{get_free_port()}/dicom-web"
    counts = functools.partial(find_study_counts, connector(url))
    [decision] = CompletionScanner(sessions, settings, counts, evidence="QIDO-RS").scan()
    assert decision.reason == "quiet for 0 s"


def test_wado_retrieves_every_instance_of_a_study(web_pacs: Orthanc, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", 3)
    web_pacs.upload(files)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    paths = retrieve_study(connector(web_pacs.dicomweb_url), study_uid, tmp_path / "got")
    got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}
    assert got == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    retrieved = pydicom.dcmread(paths[0])
    assert retrieved.pixel_array.shape == pydicom.dcmread(files[0]).pixel_array.shape
    assert not list((tmp_path / "got").glob(".*.part"))


def test_wado_of_an_unknown_study_names_the_status(web_pacs: Orthanc, tmp_path: Path) -> None:
    with pytest.raises(DicomwebError, match=r"WADO-RS study: HTTP 404"):
        retrieve_study(connector(web_pacs.dicomweb_url), "1.2.3.999", tmp_path / "none")


def test_an_archive_that_omits_the_counts_gives_no_evidence() -> None:
    study = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
    series = {"0020000E": {"vr": "UI", "Value": ["1.2.3.1"]}}
    json_type = {"Content-Type": "application/dicom+json"}
    with run_web_archive() as archive:
        archive.answers = [
            Answer(200, json.dumps([study]).encode(), json_type),
            Answer(200, json.dumps([series]).encode(), json_type),
        ]
        assert find_study_counts(connector(archive.url), ["1.2.3"]) == {}
        paths = [path for path, _, _ in archive.received]
    assert paths[0].startswith("/dicom-web/studies?")
    assert "includefield=NumberOfStudyRelatedInstances" in paths[0]
    assert paths[1].startswith("/dicom-web/studies/1.2.3/series?")


def test_echo_checks_a_dicomweb_peer_with_qido(
    web_pacs: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    down = f"http://127.0.0.1:{get_free_port()}/dicom-web"
    peers = [
        {"name": "pacs", "kind": "dicomweb", "url": web_pacs.dicomweb_url},
        {"name": "down", "kind": "dicomweb", "url": down},
    ]
    config = write_config(tmp_path / "node.toml", {"peers": peers})
    assert main(["echo", "pacs", "-c", str(config)]) == 0
    assert f"QIDO-RS {web_pacs.dicomweb_url}: answered (0 study listed)" in capsys.readouterr().out
    assert main(["echo", "down", "-c", str(config)]) == 1
    assert "QIDO-RS failed: DICOMweb peer down: QIDO-RS studies: ConnectionError" in (
        capsys.readouterr().err
    )
    assert main(["send", str(tmp_path), "--to", "pacs", "-c", str(config)]) == 2
    assert "'pacs' is a DICOMweb peer" in capsys.readouterr().err
