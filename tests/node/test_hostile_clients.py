"""The listener against clients that lie, stall or flood: each costs at most what it
sends, holds no slot for long, and leaves one log line with its address and the reason."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.net.scu import AssociationError, LocalAE, echo
from tests.node.conftest import (
    SENDER,
    SENDER_AET,
    NodeProcess,
    RunningNode,
    large_ct,
    wait_for,
)
from tests.node.raw_peer import (
    ABORT,
    ASSOCIATE_RJ,
    CT_IMAGE_STORAGE,
    associate,
    associate_rq,
    closed_by_node,
    connect,
    pdu_header,
    read_pdu,
    rss_mb,
)

StartNode = Callable[..., RunningNode]
SpawnNode = Callable[..., NodeProcess]
ECHOSCU = shutil.which("echoscu", path="/usr/bin")
GIB = 1 << 30


def _echoscu(port: int, timeout: float) -> bool:
    """DCMTK's echoscu (calling AE ECHOSCU) against the node: whether it succeeded."""
    assert ECHOSCU is not None
    result = subprocess.run(
        [ECHOSCU, "-aet", "ECHOSCU", "-aec", "AINODE", "-to", "5", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=timeout,
    )
    return result.returncode == 0


def _warnings(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


@pytest.mark.slow
def test_length_fields_of_a_gigabyte_cost_no_memory(spawn_node: SpawnNode) -> None:
    node = spawn_node()
    assert wait_for(lambda: "result writers warmed up" in node.log(), timeout=60)
    port = node.config.node.port
    before = rss_mb(node.process.pid)
    # Before any association: an A-ASSOCIATE-RQ header declaring 1 GiB.
    unassociated = [connect(port) for _ in range(3)]
    for sock in unassociated:
        sock.sendall(pdu_header(0x01, GIB))
    # Inside an association: a P-DATA-TF header declaring 1 GiB.
    associated = [associate(port) for _ in range(2)]
    for sock in associated:
        sock.sendall(pdu_header(0x04, GIB))
    time.sleep(1.0)  # what the node allocates, it allocates now, and holds
    grown = rss_mb(node.process.pid) - before
    for sock in unassociated + associated:
        answer = read_pdu(sock, timeout=5)
        assert answer is not None and answer[0] == ABORT
        assert closed_by_node(sock, timeout=5)
        sock.close()
    assert grown < 50, f"RSS grew by {grown:.0f} MB"
    log = node.log()
    assert "A-ASSOCIATE-RQ of 1073741824 bytes, more than 1048576" in log
    assert "association aborted: PDU of 1073741824 bytes, more than the 1048576" in log
    assert echo(SENDER, node.peer) == 0


def test_idle_and_closed_connections_do_not_lock_out_a_sender(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(node={"max_associations": 8})
    port = node.config.node.port
    for _ in range(40):  # connect and close at once: each frees its slot at once
        connect(port).close()
    # 40 idle connections from another address: at most max_associations_per_host get
    # a slot there, the others are refused at accept; the sender's address is unaffected.
    idle = [connect(port, source="127.0.0.2") for _ in range(40)]
    try:
        start = time.monotonic()
        assert echo(SENDER, node.peer) == 0
        assert time.monotonic() - start < 5
        if ECHOSCU is not None:
            assert _echoscu(port, timeout=5)
    finally:
        for sock in idle:
            sock.close()
    [refused] = _warnings(caplog, "connection refused: connection limit")
    assert (refused.client, refused.reason) == (
        "127.0.0.2",
        "8 connections from this address already open",
    )


def test_idle_connections_are_dropped_after_the_request_timeout(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(node={"association_request_timeout_seconds": 1})
    port = node.config.node.port
    idle = [connect(port) for _ in range(40)]  # the sender's own address this time
    try:
        start = time.monotonic()
        assert wait_for(lambda: _echo_ok(node), timeout=5, step=0.2)
        assert time.monotonic() - start < 5
        assert closed_by_node(idle[0], timeout=3)
    finally:
        for sock in idle:
            sock.close()
    [dropped] = _warnings(caplog, "connection dropped")  # throttled: one line per client
    assert dropped.client == "127.0.0.1"
    assert "no complete A-ASSOCIATE-RQ in time" in dropped.reason


def _echo_ok(node: RunningNode) -> bool:
    try:
        return echo(LocalAE(SENDER_AET, timeout=2), node.peer) == 0
    except AssociationError:
        return False


def test_a_slow_sender_is_closed_by_the_timeouts(start_node: StartNode) -> None:
    node = start_node(node={"association_request_timeout_seconds": 1, "network_timeout_seconds": 1})
    port = node.config.node.port
    request = connect(port)  # a byte every 0.2 s of an association request
    associated = associate(port)  # a byte every 0.2 s of a P-DATA-TF PDU
    associated.sendall(pdu_header(0x04, 1000))
    start = time.monotonic()
    request_closed = data_closed = None
    for index in range(40):
        for sock, payload in ((request, associate_rq()), (associated, bytes(1000))):
            with contextlib.suppress(OSError):
                sock.sendall(payload[index : index + 1])
        if request_closed is None and closed_by_node(request, timeout=0.1):
            request_closed = time.monotonic() - start
        if data_closed is None and closed_by_node(associated, timeout=0.1):
            data_closed = time.monotonic() - start
        if request_closed and data_closed:
            break
    assert request_closed is not None and request_closed < 3
    assert data_closed is not None and data_closed < 4
    assert echo(SENDER, node.peer) == 0


@pytest.mark.parametrize("ending", ["abort", "dropped"])
def test_an_interrupted_transfer_leaves_nothing_in_incoming(
    start_node: StartNode, ending: str
) -> None:
    node = start_node()
    incoming = node.config.node.storage_dir / "incoming"

    def partial_size() -> int:
        return sum(p.stat().st_size for p in incoming.rglob("*") if p.is_file())

    ae = AE(ae_title=SENDER_AET)
    ae.add_requested_context(CT_IMAGE_STORAGE.decode(), ExplicitVRLittleEndian)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", node.config.node.port, ae_title="AINODE")
    try:
        assert assoc.is_established
        sock = assoc.dul.socket
        assert sock is not None and sock.socket is not None
        raw, send = sock.socket, sock.send
        interrupt = threading.Event()

        def slow_send(data: bytes) -> None:  # about 10 MB/s: the test sees it in flight
            if interrupt.is_set():  # between two PDUs, on the sender's own thread
                if ending == "abort":
                    raw.sendall(pdu_header(ABORT, 4) + bytes(4))
                raw.close()  # "dropped": the network goes away mid-transfer
                interrupt.clear()
            time.sleep(0.1)
            send(data)

        sock.send = slow_send  # type: ignore[method-assign]
        sender = threading.Thread(target=assoc.send_c_store, args=(large_ct(20),), daemon=True)
        sender.start()
        assert wait_for(lambda: partial_size() > 2_000_000, timeout=20, step=0.01)
        interrupt.set()
        sender.join(timeout=20)
    finally:
        ae.shutdown()
    assert wait_for(lambda: partial_size() == 0, timeout=10), f"{partial_size()} bytes left"
    assert not list((node.config.node.storage_dir / "instances").rglob("*.dcm"))
    assert echo(SENDER, node.peer) == 0


def test_a_huge_request_from_a_refused_ae_is_refused_before_parsing(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    port = node.config.node.port
    for calling, contexts, reason in (
        (b"INTRUDER", 15_000, "association rejected: calling AE title not allowed"),
        (b"SENDER", 15_000, "association rejected: 15000 presentation contexts"),
        (
            b"SENDER",
            30,
            "association rejected: 30 presentation contexts (at most 128), "
            "up to 1000 transfer syntaxes",
        ),
    ):
        syntaxes = 1000 if contexts == 30 else 1
        request = associate_rq(calling=calling, contexts=contexts, transfer_syntaxes=syntaxes)
        assert 500_000 < len(request) < 1 << 20
        caplog.clear()
        start = time.monotonic()
        sock = connect(port)
        sock.sendall(request)
        answer = read_pdu(sock)
        sock.close()
        assert time.monotonic() - start < 1.0
        assert answer is not None and answer[0] == ASSOCIATE_RJ
        records = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage()[: len(reason)] for r in records] == [reason]
    assert echo(SENDER, node.peer) == 0


def test_called_ae_title_must_be_the_nodes(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    sock = connect(node.config.node.port)
    sock.sendall(associate_rq(called=b"OTHERNODE"))
    answer = read_pdu(sock)
    sock.close()
    assert answer is not None and answer[0] == ASSOCIATE_RJ
    assert answer[1][1:] == bytes([0x01, 0x01, 0x07])  # permanent, user, called AE
    wrong = node.peer.model_copy(update={"ae_title": "OTHERNODE"})
    with pytest.raises(AssociationError, match=r"rejected|aborted"):
        echo(SENDER, wrong)
    [record, *_] = _warnings(caplog, "association rejected: called AE title not recognised")
    assert (record.called_aet, record.calling_aet) == ("OTHERNODE", SENDER_AET)


def test_called_ae_title_check_can_be_turned_off(start_node: StartNode) -> None:
    node = start_node(security={"check_called_aet": False})
    assert echo(SENDER, node.peer.model_copy(update={"ae_title": "OTHERNODE"})) == 0


def test_a_rejection_for_the_association_limit_says_so(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(node={"max_associations": 1})
    port = node.config.node.port
    held = associate(port)
    try:
        # Another address: a connection slot, but no association (A-ASSOCIATE-RJ).
        other = connect(port, source="127.0.0.2")
        other.sendall(associate_rq())
        answer = read_pdu(other)
        other.close()
        assert answer is not None and answer[0] == ASSOCIATE_RJ
        assert answer[1][1:] == bytes([0x02, 0x03, 0x02])  # transient, local limit exceeded
        # The same address: refused when it connects.
        with pytest.raises(AssociationError, match=r"rejected|aborted|refused"):
            echo(SENDER, node.peer)
    finally:
        held.close()
    assert wait_for(lambda: bool(_warnings(caplog, "association rejected: association limit")))
    [refused] = _warnings(caplog, "connection refused: connection limit")
    assert refused.reason == "1 connections from this address already open"
    assert not _warnings(caplog, "association rejected: calling AE")
