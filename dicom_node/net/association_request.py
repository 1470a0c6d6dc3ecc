"""The A-ASSOCIATE-RQ as it arrives on a new connection, read before pynetdicom sees it.

Everything here costs at most what the peer sends: the PDU is read in chunks as its bytes
arrive (never into a buffer sized by its length field), within one deadline, and refused
above :data:`MAX_REQUEST_BYTES`. Its fixed fields (the AE titles) are read first, so that
a request the node will refuse is refused before its presentation contexts are parsed;
those are only counted (:func:`count_items`), never decoded. The answers that refuse a
request are built with pynetdicom's own PDU classes.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ

from dicom_node.errors import DicomNodeError

ASSOCIATE_RQ = 0x01
_PDU_HEADER = struct.Struct(">BxL")
PDU_HEADER_BYTES = _PDU_HEADER.size
# Protocol version, reserved, called AE title, calling AE title, 32 reserved bytes.
FIXED_FIELDS_BYTES = 68
# DCMTK's limit for an A-ASSOCIATE PDU (dcmAssociatePDUSizeLimit): real requests are a
# few kilobytes, 128 contexts of 40 transfer syntaxes each about 150 KB.
MAX_REQUEST_BYTES = 1 << 20
# Presentation context IDs are the odd numbers 1-255 (PS3.8 9.3.2.2).
MAX_PRESENTATION_CONTEXTS = 128
# pydicom knows about 40 transfer syntaxes; no sender proposes more for one context.
MAX_TRANSFER_SYNTAXES = 128
_CHUNK = 64 * 1024
_ITEM_HEADER = struct.Struct(">BxH")
_PRESENTATION_CONTEXT_ITEM = 0x20
_TRANSFER_SYNTAX_ITEM = 0x40
_CONTEXT_ITEM_FIXED = 4  # context ID and three reserved bytes before the sub-items

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4, with what the log says.
REJECT_REASONS: dict[tuple[int, int, int], str] = {
    (0x01, 0x01, 0x01): "request not acceptable",
    (0x01, 0x01, 0x03): "calling AE title not allowed",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02, 0x01): "user identity not accepted",
    (0x02, 0x03, 0x01): "temporary congestion",
    (0x02, 0x03, 0x02): "association limit reached",
}
CALLING_AE_NOT_ALLOWED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
NOT_ACCEPTABLE = (0x01, 0x01, 0x01)
TEMPORARY_CONGESTION = (0x02, 0x03, 0x01)


class ConnectionDropped(DicomNodeError):
    """The connection ends before an association; ``reason`` says why.

    ``answer`` is a PDU to send before closing (an A-ABORT), or nothing; ``event`` the
    log line's message, None for what is not worth a warning (a port probe).
    """

    def __init__(
        self, reason: str, answer: bytes = b"", event: str | None = "connection dropped"
    ) -> None:
        self.reason = reason
        self.answer = answer
        self.event = event
        super().__init__(reason)


@dataclass(frozen=True)
class RequestStart:
    """The PDU header and fixed fields of an A-ASSOCIATE-RQ."""

    length: int  # of the PDU after its 6-byte header
    called_ae_title: str
    calling_ae_title: str
    head: bytes  # the bytes read so far: header and fixed fields


def _ae_title(raw: bytes) -> str:
    # AE titles are ISO 646 (ASCII); anything else is kept visible, never decoded away.
    return raw.decode("ascii", errors="backslashreplace").strip(" \x00")


def read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    """``count`` bytes from ``sock`` before the monotonic ``deadline``, in bounded chunks.

    Raises
    ------
    ConnectionDropped
        When the peer closes, the deadline passes or the socket fails first.
    """
    chunks: list[bytes] = []
    missing = count
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionDropped(
                f"no complete A-ASSOCIATE-RQ in time ({count - missing} of {count} bytes)"
            )
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(missing, _CHUNK))
        except TimeoutError:
            continue
        except OSError as exc:
            raise ConnectionDropped(f"connection failed: {exc}") from None
        if not chunk:
            if chunks or count != PDU_HEADER_BYTES:
                raise ConnectionDropped(
                    f"closed by the peer ({count - missing} of {count} bytes received)"
                )
            raise ConnectionDropped("closed by the peer before sending anything", event=None)
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def discard(sock: socket.socket, count: int, deadline: float) -> None:
    """Read and drop ``count`` bytes (the rest of a refused request), so that the peer
    reads the answer instead of a reset; gives up quietly at the deadline."""
    try:
        while count > 0:
            count -= len(read_exactly(sock, min(count, _CHUNK), deadline))
    except ConnectionDropped:
        pass


def read_request_start(sock: socket.socket, deadline: float) -> RequestStart:
    """Read the PDU header and fixed fields of the first PDU, which must be an
    A-ASSOCIATE-RQ of at most :data:`MAX_REQUEST_BYTES`.

    Raises
    ------
    ConnectionDropped
        When the peer sends something else, too much, too little or too late.
    """
    header = read_exactly(sock, PDU_HEADER_BYTES, deadline)
    pdu_type, length = _PDU_HEADER.unpack(header)
    if pdu_type != ASSOCIATE_RQ:
        raise ConnectionDropped(
            f"first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ",
            abort_pdu(reason=0x02),  # unexpected PDU
        )
    if length > MAX_REQUEST_BYTES:
        raise ConnectionDropped(
            f"A-ASSOCIATE-RQ of {length} bytes, more than {MAX_REQUEST_BYTES}",
            abort_pdu(reason=0x06),  # invalid PDU parameter value
        )
    if length < FIXED_FIELDS_BYTES:
        raise ConnectionDropped(
            f"A-ASSOCIATE-RQ of {length} bytes is shorter than its fixed fields",
            abort_pdu(reason=0x06),
        )
    fixed = read_exactly(sock, FIXED_FIELDS_BYTES, deadline)
    return RequestStart(
        length=length,
        called_ae_title=_ae_title(fixed[4:20]),
        calling_ae_title=_ae_title(fixed[20:36]),
        head=header + fixed,
    )


def count_items(variable_items: bytes) -> tuple[int, int]:
    """(presentation contexts, most transfer syntaxes in one of them) of an
    A-ASSOCIATE-RQ's variable items, by walking item headers only.

    Malformed items stop the count; pynetdicom then refuses the request as it does.
    """
    contexts = most_syntaxes = 0
    offset, end = 0, len(variable_items)
    while offset + _ITEM_HEADER.size <= end:
        item_type, item_length = _ITEM_HEADER.unpack_from(variable_items, offset)
        body = offset + _ITEM_HEADER.size
        if item_type == _PRESENTATION_CONTEXT_ITEM:
            contexts += 1
            syntaxes = _count_sub_items(
                variable_items, body + _CONTEXT_ITEM_FIXED, min(body + item_length, end)
            )
            most_syntaxes = max(most_syntaxes, syntaxes)
        offset = body + item_length
    return contexts, most_syntaxes


def _count_sub_items(data: bytes, offset: int, end: int) -> int:
    count = 0
    while offset + _ITEM_HEADER.size <= end:
        item_type, item_length = _ITEM_HEADER.unpack_from(data, offset)
        count += item_type == _TRANSFER_SYNTAX_ITEM
        offset += _ITEM_HEADER.size + item_length
    return count


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    """An encoded A-ASSOCIATE-RJ."""
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = result, source, diagnostic
    return bytes(pdu.encode())


def abort_pdu(reason: int = 0x00) -> bytes:
    """An encoded A-ABORT from the service provider (source 2) with ``reason``."""
    pdu = A_ABORT_RQ()
    pdu.source, pdu.reason_diagnostic = 0x02, reason
    return bytes(pdu.encode())
