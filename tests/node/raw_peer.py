"""A hostile or broken DICOM peer: raw PDU bytes over a socket, every wait bounded.

The listener's defences are tested with what no well-behaved library sends: length
fields that lie, requests that never finish, AE titles with newlines.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

VERIFICATION = b"1.2.840.10008.1.1"
CT_IMAGE_STORAGE = b"1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = b"1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
ASSOCIATE_AC, ASSOCIATE_RJ, ABORT = 0x02, 0x03, 0x07


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(
    called: bytes = b"AINODE",
    calling: bytes = b"SENDER",
    contexts: int = 1,
    transfer_syntaxes: int = 1,
    abstract_syntax: bytes = VERIFICATION,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU; ``contexts`` may exceed what the standard allows."""
    syntaxes = b"".join(_item(0x40, EXPLICIT_VR_LITTLE_ENDIAN) for _ in range(transfer_syntaxes))
    items = [
        _item(
            0x20,
            struct.pack(">BBBB", (2 * i + 1) % 256, 0, 0, 0)
            + _item(0x30, abstract_syntax)
            + syntaxes,
        )
        for i in range(contexts)
    ]
    user_info = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16)[:16]
        + calling.ljust(16)[:16]
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT)
        + b"".join(items)
        + user_info
    )
    return pdu_header(0x01, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The 6-byte header of a PDU of ``pdu_type`` declaring ``length`` bytes to follow."""
    return struct.pack(">BBL", pdu_type, 0, length)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the node on 127.0.0.1 from the loopback address ``source``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_pdu(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """The next PDU as (type, body); None when the node closed the connection."""
    sock.settimeout(timeout)
    header = _read(sock, 6)
    if len(header) < 6:
        return None
    pdu_type, length = struct.unpack(">BxL", header)
    return pdu_type, _read(sock, length)


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data


def closed_by_node(sock: socket.socket, timeout: float) -> bool:
    """Whether the node closes the connection within ``timeout`` seconds (whatever it
    sends first is read and dropped)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def associate(port: int, calling: bytes = b"SENDER") -> socket.socket:
    """A connection with an accepted association (Verification only).

    Raises
    ------
    AssertionError
        When the node does not answer A-ASSOCIATE-AC.
    """
    sock = connect(port)
    sock.sendall(associate_rq(calling=calling))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == ASSOCIATE_AC, answer
    return sock


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"no VmRSS for process {pid}")
