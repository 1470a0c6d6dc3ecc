"""Delivery to DICOMweb peers by STOW-RS: against Orthanc with its DICOMweb plugin (stored,
an outage, a rejected instance, as the DIMSE delivery tests do), and against a scripted
archive for every HTTP answer the rules name (5xx, 429 with Retry-After, 4xx, 202 with
per-instance reasons, timeouts)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import WorkState, utcnow
from dicom_node.net.scu import LocalAE
from dicom_node.work.delivery import DeliveryScanner
from tests.conftest import get_free_port
from tests.orchestration.conftest import make_config
from tests.orchestration.pacs import outage
from tests.orchestration.test_delivery import deliveries, make_due, queue_results
from tests.orchestration.web_archive import Answer, WebArchive, run_web_archive
from tests.peers import Orthanc

pytestmark = pytest.mark.integration


def scanner_for(
    tmp_path: Path, sessions: sessionmaker[Session], url: str, peer: Any = None, **delivery: Any
) -> DeliveryScanner:
    config = make_config(
        tmp_path,
        peers=[{"name": "pacs", "kind": "dicomweb", "url": url, **(peer or {})}],
        routes=[],
        delivery={"backoff_initial_seconds": 0, "max_attempts": 3, **delivery},
    )
    return DeliveryScanner(config, sessions, LocalAE("AINODE", 5.0))


@pytest.fixture
def web_archive() -> Iterator[WebArchive]:
    with run_web_archive() as archive:
        yield archive


def in_orthanc(pacs: Orthanc, sop_uid: str) -> bool:
    found = pacs.rest("POST", "/tools/lookup", sop_uid.encode())
    return any(item["Type"] == "Instance" for item in found or [])


def stow_answer(stored: Sequence[str] = (), failed: dict[str, int] | None = None) -> bytes:
    """A STOW-RS response body listing ``stored`` and ``failed`` (UID -> FailureReason)."""
    answer = Dataset()
    answer.ReferencedSOPSequence = [_item(uid) for uid in stored]
    answer.FailedSOPSequence = [_item(uid, reason) for uid, reason in (failed or {}).items()]
    return json.dumps(answer.to_json_dict()).encode()


def _item(uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


JSON = {"Content-Type": "application/dicom+json"}


# Against Orthanc with its DICOMweb plugin.


def test_batch_is_stored_by_stow_rs_and_present_in_orthanc(
    sessions: sessionmaker[Session], web_pacs: Orthanc, tmp_path: Path
) -> None:
    uids = queue_results(sessions, tmp_path, 4)
    scanner = scanner_for(tmp_path, sessions, web_pacs.dicomweb_url, {"max_request_mb": 0.05})
    assert scanner.scan() == 4  # CT_small is ~39 kB: one instance per request
    assert {(d.state, d.attempts, d.last_status, d.error) for d in deliveries(sessions)} == {
        (WorkState.DONE, 1, 0, None)
    }
    assert all(in_orthanc(web_pacs, uid) for uid in uids)
    assert scanner.scan() == 0 and web_pacs.instance_count() == 4  # nothing sent twice


def test_outage_is_transient_and_delivery_resumes_when_orthanc_is_back(
    sessions: sessionmaker[Session], web_pacs: Orthanc, tmp_path: Path
) -> None:
    uids = queue_results(sessions, tmp_path, 2)
    scanner = scanner_for(tmp_path, sessions, web_pacs.dicomweb_url, max_attempts=10)
    with outage(web_pacs) as restart:
        before = utcnow()
        assert scanner.scan() == 0
        rows = deliveries(sessions)
        assert {(r.state, r.attempts) for r in rows} == {(WorkState.QUEUED, 1)}
        assert all((r.error or "").startswith("transient: no connection") for r in rows)
        assert all(r.next_attempt_at >= before for r in rows)
        restart()
        make_due(sessions)
        assert scanner.scan() == 2
        assert {r.state for r in deliveries(sessions)} == {WorkState.DONE}
        assert all(in_orthanc(web_pacs, uid) for uid in uids)


def test_rejected_instance_fails_permanently_after_one_retry_and_the_rest_is_stored(
    sessions: sessionmaker[Session], web_pacs: Orthanc, tmp_path: Path
) -> None:
    uids = queue_results(sessions, tmp_path, 3)
    bad = deliveries(sessions)[1]
    dataset = pydicom.dcmread(bad.path)
    del dataset.StudyInstanceUID  # Orthanc refuses it: FailureReason 0xC000
    dataset.save_as(bad.path)
    scanner = scanner_for(tmp_path, sessions, web_pacs.dicomweb_url)
    assert scanner.scan() == 2
    rows = deliveries(sessions)
    assert [r.state for r in rows] == [WorkState.DONE, WorkState.QUEUED, WorkState.DONE]
    make_due(sessions)
    assert scanner.scan() == 0
    rejected = deliveries(sessions)[1]
    assert (rejected.state, rejected.attempts, rejected.last_status) == (
        WorkState.FAILED,
        2,
        0xC000,
    )
    assert rejected.error == "permanent: 0xC000 Cannot Understand"
    make_due(sessions)
    scanner.scan()
    assert deliveries(sessions)[1].attempts == 2  # never retried in a loop
    assert in_orthanc(web_pacs, uids[0]) and not in_orthanc(web_pacs, uids[1])


# Against the scripted archive: every HTTP answer the rules name.


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (
            Answer(503, b"busy", {"Retry-After": "120"}),
            "transient: HTTP 503 Service Unavailable: busy",
            120,
        ),
        (Answer(429, headers={"Retry-After": "30"}), "transient: HTTP 429 Too Many Requests", 30),
        (Answer(500), "transient: HTTP 500 Internal Server Error", 0),
        (Answer(403, b"not for you"), "permanent: HTTP 403 Forbidden: not for you", 0),
        (Answer(413), "permanent: HTTP 413 Request Entity Too Large", 0),
    ],
)
def test_http_status_decides_transient_or_permanent(
    sessions: sessionmaker[Session],
    web_archive: WebArchive,
    tmp_path: Path,
    answer: Answer,
    error: str,
    retry_after: int,
) -> None:
    queue_results(sessions, tmp_path, 2)
    web_archive.answers = [answer]
    scanner = scanner_for(tmp_path, sessions, web_archive.url, backoff_initial_seconds=1)
    before = utcnow()
    assert scanner.scan() == 0
    assert len(web_archive.received) == 1  # one request for the batch
    path, headers, _ = web_archive.received[0]
    assert path == "/dicom-web/studies"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    rows = deliveries(sessions)
    assert {(r.state, r.error, r.last_status) for r in rows} == {(WorkState.QUEUED, error, None)}
    wait = (rows[0].next_attempt_at - before).total_seconds()
    assert max(1, retry_after) <= wait < max(1, retry_after) + 5  # backoff or Retry-After


def test_retry_after_as_an_http_date(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 1)
    web_archive.answers = [Answer(503, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})]
    scanner_for(tmp_path, sessions, web_archive.url, backoff_initial_seconds=1).scan()
    assert deliveries(sessions)[0].next_attempt_at.year == 2099


def test_202_answer_gives_each_instance_its_own_outcome(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    first, full, bad, unlisted = queue_results(sessions, tmp_path, 4)
    body = stow_answer([first], {full: 0xA700, bad: 0xA900})
    web_archive.answers = [Answer(202, body, JSON)]
    scanner = scanner_for(tmp_path, sessions, web_archive.url)
    assert scanner.scan() == 1
    rows = {r.sop_instance_uid: r for r in deliveries(sessions)}
    assert rows[first].state == WorkState.DONE
    assert (rows[full].state, rows[full].last_status) == (WorkState.QUEUED, 0xA700)
    assert rows[full].error == "transient: 0xA700 Refused: Out of Resources"
    assert rows[bad].error == "permanent: 0xA900 Data Set Does Not Match SOP Class"
    assert rows[unlisted].error == "transient: HTTP 202: the response does not list it"


def test_409_answer_lists_why_each_failed(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    (uid,) = queue_results(sessions, tmp_path, 1)
    web_archive.answers = [Answer(409, stow_answer(failed={uid: 0x0122}), JSON)]
    scanner_for(tmp_path, sessions, web_archive.url).scan()
    [row] = deliveries(sessions)
    assert row.error == "permanent: 0x0122 Refused: SOP Class Not Supported"


def test_200_without_a_body_means_all_stored(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 2)
    web_archive.answers = [Answer(200)]
    assert scanner_for(tmp_path, sessions, web_archive.url).scan() == 2


def test_timeout_is_transient_and_the_rest_of_the_batch_waits(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 3)
    web_archive.answers = [Answer(200, delay=3.0)]
    peer = {"read_timeout_seconds": 0.5, "max_request_mb": 0.05}  # one instance per request
    scanner_for(tmp_path, sessions, web_archive.url, peer).scan()
    assert len(web_archive.received) == 1  # the other two were not tried
    rows = deliveries(sessions)
    assert {(r.state, r.error) for r in rows} == {
        (WorkState.QUEUED, "transient: timed out: ReadTimeout")
    }


def test_bearer_token_from_a_command_is_sent(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 1)
    auth = {"type": "bearer", "token_command": ["echo", "tok-123"]}
    assert scanner_for(tmp_path, sessions, web_archive.url, {"auth": auth}).scan() == 1
    assert web_archive.received[0][1]["Authorization"] == "Bearer tok-123"


def test_a_failing_token_command_is_transient_with_its_reason(
    sessions: sessionmaker[Session], web_archive: WebArchive, tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 1)
    auth = {"type": "bearer", "token_command": ["false"]}
    assert scanner_for(tmp_path, sessions, web_archive.url, {"auth": auth}).scan() == 0
    assert web_archive.received == []
    assert deliveries(sessions)[0].error == (
        "transient: auth.token_command exited with 1 and printed 0 line(s), not one token"
    )


def test_unreachable_dicomweb_peer_is_transient(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    queue_results(sessions, tmp_path, 1)
    url = f"http://127.0.0.1:{get_free_port()}/dicom-web"
    assert scanner_for(tmp_path, sessions, url).scan() == 0
    assert (deliveries(sessions)[0].error or "").startswith("transient: no connection")


def test_basic_auth_with_the_password_from_the_environment(
    sessions: sessionmaker[Session],
    web_archive: WebArchive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue_results(sessions, tmp_path, 1)
    auth = {"type": "basic", "username": "node", "password_env": "ARCHIVE_PASSWORD"}
    scanner = scanner_for(tmp_path, sessions, web_archive.url, {"auth": auth})
    monkeypatch.delenv("ARCHIVE_PASSWORD", raising=False)
    assert scanner.scan() == 0
    error = deliveries(sessions)[0].error or ""
    assert error == (
        "transient: auth.password_env: environment variable ARCHIVE_PASSWORD is not set"
    )
    assert web_archive.received == []
    monkeypatch.setenv("ARCHIVE_PASSWORD", "pass word")
    web_archive.answers = [Answer(401, headers={"WWW-Authenticate": "Basic"})]
    make_due(sessions)
    assert scanner.scan() == 0
    assert deliveries(sessions)[0].error == "permanent: HTTP 401 Unauthorized"
    expected = "Basic " + base64.b64encode(b"node:pass word").decode()
    assert web_archive.received[0][1]["Authorization"] == expected
