"""The STOW-RS receiver, in-process: instances stored like C-STOREs, bad input refused
with the right HTTP status or FailureReason, the node still up, nothing half-written."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from sqlalchemy import func, select

from dicom_node.audit import read_audit
from dicom_node.db.schema import Instance
from dicom_node.net import stow_receiver
from dicom_node.net.stow_receiver import StowReceiver
from tests.conftest import get_free_port
from tests.node.conftest import RunningNode
from tests.node.test_tls import make_pki
from tests.orchestration.studies import ct_series

TOKEN = "s3cret-token"
BOUNDARY = "node-test-boundary"
# What a client sees when the TLS layer turns it away (the wording varies with timing).
REFUSED = r"(?i)ssl|certificate|alert|aborted|closed|reset"
HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
}


def multipart(
    parts: list[bytes], part_type: str = "application/dicom", close: bool = True
) -> bytes:
    """A multipart/related body of ``parts``, with its closing boundary when ``close``."""
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


class Receiving:
    """The node with its receiver, and what a test checks afterwards."""

    def __init__(self, node: RunningNode, folder: Path) -> None:
        self.node = node
        self.folder = folder
        [self.receiver] = [c for c in node.service.components if isinstance(c, StowReceiver)]
        scheme = "https" if node.config.dicomweb.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.receiver.port}/studies"

    def post(self, body: Any, headers: dict[str, str] | None = None, path: str = "") -> Any:
        return requests.post(self.url + path, data=body, headers=headers or HEADERS, timeout=30)

    def stored(self) -> int:
        with self.node.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)

    def spool_files(self) -> list[Path]:
        return sorted(self.node.service.spool.instances_dir.rglob("*.dcm"))

    def incoming(self) -> list[Path]:
        return sorted(p for p in self.node.service.spool.incoming_dir.iterdir())

    def assert_up_and_clean(self) -> None:
        """Nothing half-written is left, and the receiver still stores a good request."""
        deadline = time.monotonic() + 10
        while self.incoming() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.incoming() == []
        [path] = ct_series(self.folder / f"probe{time.monotonic_ns()}", 1)
        before = self.stored()
        assert self.post(multipart([path.read_bytes()])).status_code == 200
        assert self.stored() == before + 1
        assert len(self.spool_files()) == self.stored()


@pytest.fixture
def receiving(start_node: Callable[..., RunningNode], tmp_path: Path) -> Callable[..., Receiving]:
    """``receiving(**dicomweb)`` starts a node with the receiver on plain HTTP + tokens."""
    (tmp_path / "tokens").write_text(f"# who may send\n{TOKEN}\n")

    def start(
        node: dict[str, Any] | None = None, audit: dict[str, Any] | None = None, **dicomweb: Any
    ) -> Receiving:
        settings = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": get_free_port(),
            "allow_plain_http": True,
            "tokens_file": str(tmp_path / "tokens"),
            **dicomweb,
        }
        sections = {"dicomweb": settings, "node": node or {}, **({"audit": audit} if audit else {})}
        return Receiving(start_node(**sections), tmp_path)

    return start


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return ct_series(tmp_path / "study", 3)


def request_head(length: int) -> bytes:
    """The request line and headers of a STOW-RS request of ``length`` bytes, for tests
    that write the body by hand."""
    lines = ["POST /studies HTTP/1.1", "Host: node", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in HEADERS.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def uids(answer: dict[str, Any], sequence: str) -> list[str]:
    tag = {"ReferencedSOPSequence": "00081199", "FailedSOPSequence": "00081198"}[sequence]
    items = answer.get(tag, {}).get("Value", [])
    return [item.get("00081155", {}).get("Value", [""])[0] for item in items]


def failure_reasons(answer: dict[str, Any]) -> list[int]:
    items = answer.get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_every_part_is_stored_like_a_c_store(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving()
    answer = node.post(multipart([p.read_bytes() for p in study]))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/dicom+json"
    assert uids(answer.json(), "ReferencedSOPSequence") == [sop_uid(p) for p in study]
    assert node.stored() == 3 and len(node.spool_files()) == 3
    assert node.spool_files()[0].read_bytes() in {p.read_bytes() for p in study}
    node.assert_up_and_clean()


def test_the_audit_trail_counts_a_stow_rs_request_per_study_like_an_association(
    receiving: Callable[..., Receiving], study: list[Path], tmp_path: Path
) -> None:
    node = receiving(audit={"dir": str(tmp_path / "trail")})
    assert node.post(multipart([p.read_bytes() for p in study])).status_code == 200
    assert node.post(multipart([study[0].read_bytes()])).status_code == 200  # a duplicate

    lines = [
        line for line in read_audit(tmp_path / "trail") if line["event"] == "instances-received"
    ]
    assert [(line["via"], line["outcomes"]) for line in lines] == [
        ("STOW-RS", {"new": 3}),
        ("STOW-RS", {"kept": 1}),
    ]
    assert {line["study_uid"] for line in lines} == {
        str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    }
    assert lines[0]["client"] == "127.0.0.1" and lines[0]["calling_aet"] is None


def test_bad_parts_get_failure_reasons_and_good_ones_are_stored(
    receiving: Callable[..., Receiving], study: list[Path], tmp_path: Path
) -> None:
    node = receiving()
    no_uid = pydicom.dcmread(study[1])
    del no_uid.SeriesInstanceUID
    no_uid.save_as(tmp_path / "no-series.dcm")
    parts = [
        study[0].read_bytes(),
        b"this is not DICOM at all",
        (tmp_path / "no-series.dcm").read_bytes(),
    ]
    answer = node.post(multipart(parts))
    assert answer.status_code == 202
    assert uids(answer.json(), "ReferencedSOPSequence") == [sop_uid(study[0])]
    # Not Part 10; missing Series Instance UID (the C-STORE's 0xC220).
    assert failure_reasons(answer.json()) == [0xC210, 0xC220]
    assert node.stored() == 1
    node.assert_up_and_clean()


def test_parts_of_another_media_type_are_refused(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving()
    headers = {**HEADERS, "Content-Type": f"multipart/related; boundary={BOUNDARY}"}
    answer = node.post(multipart([b'{"00100010": {}}'], "application/dicom+json"), headers)
    assert answer.status_code == 409  # nothing stored
    assert failure_reasons(answer.json()) == [0x0122]
    node.assert_up_and_clean()


def test_study_scoped_post_refuses_instances_of_other_studies(
    receiving: Callable[..., Receiving], study: list[Path], tmp_path: Path
) -> None:
    node = receiving()
    [other] = ct_series(tmp_path / "other", 1)
    study_uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    answer = node.post(multipart([study[0].read_bytes(), other.read_bytes()]), path=f"/{study_uid}")
    assert answer.status_code == 202
    assert uids(answer.json(), "FailedSOPSequence") == [sop_uid(other)]
    assert failure_reasons(answer.json()) == [0xA900]
    assert node.stored() == 1
    node.assert_up_and_clean()


@pytest.mark.parametrize("study_path", ["1.2.x", "1.2%0Aforged%20log%20line", "1" * 65])
def test_a_url_study_that_is_not_a_uid_is_400(
    receiving: Callable[..., Receiving],
    study: list[Path],
    study_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = receiving()
    answer = node.post(multipart([p.read_bytes() for p in study]), path="/" + study_path)
    assert (answer.status_code, answer.text) == (
        400,
        "the URL's study is not a Study Instance UID\n",
    )
    assert "forged" not in caplog.text
    node.assert_up_and_clean()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}',
        f"multipart/form-data; boundary={BOUNDARY}",
        "",
    ],
)
def test_wrong_content_type_is_415(
    receiving: Callable[..., Receiving], study: list[Path], content_type: str
) -> None:
    node = receiving()
    answer = node.post(
        multipart([study[0].read_bytes()]), {**HEADERS, "Content-Type": content_type}
    )
    assert answer.status_code == 415
    assert "multipart/related" in answer.text
    assert node.stored() == 0
    node.assert_up_and_clean()


def test_content_type_without_boundary_is_400(receiving: Callable[..., Receiving]) -> None:
    node = receiving()
    headers = {**HEADERS, "Content-Type": 'multipart/related; type="application/dicom"'}
    answer = node.post(b"--x\r\n\r\n", headers)
    assert (answer.status_code, answer.text) == (400, "the content type has no boundary\n")
    node.assert_up_and_clean()


def test_malformed_multipart_is_400(receiving: Callable[..., Receiving]) -> None:
    node = receiving()
    answer = node.post(b"--" + BOUNDARY.encode() + b"garbage\r\n\x00\x01 no headers here")
    assert answer.status_code == 400
    assert "malformed multipart body" in answer.text
    node.assert_up_and_clean()


def test_body_without_any_boundary_is_400(receiving: Callable[..., Receiving]) -> None:
    node = receiving()
    answer = node.post(b"just some bytes, no multipart structure")
    assert answer.status_code == 400
    assert node.stored() == 0
    node.assert_up_and_clean()


def test_truncated_body_keeps_whole_parts_and_drops_the_cut_one(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving()
    whole = multipart([p.read_bytes() for p in study])
    cut = whole[: len(whole) - len(study[2].read_bytes()) // 2]  # inside the third part
    answer = node.post(cut)
    assert answer.status_code == 400
    assert uids(answer.json(), "ReferencedSOPSequence") == [sop_uid(p) for p in study[:2]]
    assert node.stored() == 2
    node.assert_up_and_clean()


def test_sender_vanishing_mid_part_leaves_nothing_behind(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving()
    body = multipart([study[0].read_bytes()])
    head = request_head(len(body))
    with socket.create_connection(("127.0.0.1", node.receiver.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)
    assert node.stored() == 0
    node.assert_up_and_clean()


def test_stalled_body_is_408(receiving: Callable[..., Receiving], study: list[Path]) -> None:
    node = receiving(node={"network_timeout_seconds": 1})
    body = multipart([study[0].read_bytes()])
    head = request_head(len(body))
    with socket.create_connection(("127.0.0.1", node.receiver.port), timeout=10) as sock:
        sock.sendall(head + body[:100])
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 ")
    node.assert_up_and_clean()


def test_declared_oversized_body_is_413_before_it_is_read(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving(max_body_mb=0.05)
    answer = node.post(multipart([p.read_bytes() for p in study]))
    assert answer.status_code == 413
    assert node.stored() == 0
    node.receiver.app.max_body = 1 << 30
    node.assert_up_and_clean()


def test_streamed_body_growing_past_the_limit_is_413(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    size = study[0].stat().st_size
    node = receiving(max_body_mb=2.5 * size / (1024 * 1024))

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        body = multipart([p.read_bytes() for p in study])
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    answer = node.post(chunks())
    assert answer.status_code == 413
    assert uids(answer.json(), "ReferencedSOPSequence") == [sop_uid(p) for p in study[:2]]
    assert node.stored() == 2
    node.receiver.app.max_body = 1 << 30
    node.assert_up_and_clean()


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "])
def test_no_valid_token_no_write(
    receiving: Callable[..., Receiving], study: list[Path], authorization: str | None
) -> None:
    node = receiving()
    headers = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = node.post(multipart([study[0].read_bytes()]), headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert node.stored() == 0 and node.spool_files() == []
    node.assert_up_and_clean()


def test_a_token_removed_from_the_file_stops_working(
    receiving: Callable[..., Receiving], study: list[Path], tmp_path: Path
) -> None:
    node = receiving()
    assert node.post(multipart([study[0].read_bytes()])).status_code == 200
    (tmp_path / "tokens").write_text("another-token-entirely\n")
    assert node.post(multipart([study[1].read_bytes()])).status_code == 401


def test_address_outside_allowed_hosts_is_403(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving(allowed_hosts=["10.0.0.0/8"])
    answer = node.post(multipart([study[0].read_bytes()]))
    assert answer.status_code == 403
    assert node.stored() == 0


def test_https_with_client_certificates_instead_of_tokens(
    receiving: Callable[..., Receiving], study: list[Path], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {
        "cert_file": str(pki / "node.crt"),
        "key_file": str(pki / "node.key"),
        "ca_file": str(pki / "ca.crt"),
    }
    node = receiving(tls=tls, tokens_file=None, allow_plain_http=False)
    assert node.url.startswith("https://")
    headers = {"Content-Type": HEADERS["Content-Type"]}
    body = multipart([study[0].read_bytes()])
    answer = requests.post(
        node.url,
        data=body,
        headers=headers,
        verify=str(pki / "ca.crt"),
        cert=(str(pki / "client.crt"), str(pki / "client.key")),
        timeout=30,
    )
    assert answer.status_code == 200
    with pytest.raises(
        requests.exceptions.ConnectionError, match=r"(?i)ssl|certificate|alert|aborted|closed"
    ):
        requests.post(node.url, data=body, headers=headers, verify=str(pki / "ca.crt"), timeout=30)
    with pytest.raises(requests.exceptions.ConnectionError, match=REFUSED):
        requests.post(node.url.replace("https", "http"), data=body, headers=headers, timeout=30)
    assert node.stored() == 1


def test_a_silent_connection_is_closed_and_holds_no_slot(
    receiving: Callable[..., Receiving], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stow_receiver, "KEEP_ALIVE_S", 1)
    node = receiving(max_connections=1)
    [probe] = ct_series(node.folder / "busy", 1)
    with socket.create_connection(("127.0.0.1", node.receiver.port), timeout=10) as sock:
        started = time.monotonic()
        assert node.post(multipart([probe.read_bytes()])).status_code == 503  # slot taken
        assert sock.recv(1024) == b""  # closed by the node, not by the test's timeout
        assert time.monotonic() - started < 5
    node.assert_up_and_clean()  # the only slot is free again


def test_a_full_disk_is_503_with_retry_after(
    receiving: Callable[..., Receiving], study: list[Path]
) -> None:
    node = receiving()
    node.node.service.listener.handler.min_free_bytes = 1 << 60  # a floor no disk meets
    answer = node.post(multipart([study[0].read_bytes()]))
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "60")
    assert answer.text == "free disk below node.min_free_disk_mb\n"
    assert node.stored() == 0
    node.node.service.listener.handler.min_free_bytes = 0
    node.assert_up_and_clean()


def test_a_disk_that_fills_while_a_part_is_written_is_503(
    receiving: Callable[..., Receiving], study: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = receiving()

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(stow_receiver._PartWriter, "_data", full)
        answer = node.post(multipart([study[0].read_bytes()]))
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "60")
    assert answer.text == "cannot write the incoming part: No space left on device\n"
    assert node.stored() == 0
    node.assert_up_and_clean()
