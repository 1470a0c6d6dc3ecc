"""Reading the PDUs of an accepted association: in bulk, bounded, and in time.

pynetdicom's DUL reads a PDU as ``recv(6)`` (type and length) and then ``recv(length)``.
:class:`GuardedSocket` serves the second read straight into one buffer (few system
calls: ingest is bound by per-message latency), after one comparison that refuses a
length above what the node negotiated, so that a length field never sizes an allocation
beyond it. A PDU must also arrive whole within the network timeout, so that a peer
sending a byte a second cannot hold the connection; the clock is read only when a read
returns part of a PDU. The kernel bounds every wait (``SO_RCVTIMEO``/``SO_SNDTIMEO``), at
no cost per read.

:class:`PrefetchedSocket` first hands pynetdicom the A-ASSOCIATE-RQ that the listener
already read (:mod:`dicom_node.net.association_request`), then becomes a GuardedSocket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from typing import cast

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from dicom_node.net.association_request import abort_pdu
from dicom_node.net.pynetdicom_internals import close_socket, swap_socket_class

logger = logging.getLogger(__name__)

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def set_low_latency(sock: socket.socket) -> None:
    """TCP_NODELAY and TCP_QUICKACK: ingest is bound by per-message latency, not bandwidth.

    Without them every small DIMSE response waits for Nagle and delayed ACKs on
    loopback (see FACTS.md: about 7x slower for Orthanc sending 300 CT slices).
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if _QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def bound_waits(sock: socket.socket, seconds: float) -> None:
    """Make ``sock`` blocking, with every single receive and send bounded by ``seconds``
    in the kernel (a stalled peer makes it raise ``OSError``)."""
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class GuardedSocket(AssociationSocket):
    """pynetdicom's association socket, reading each PDU in as few system calls as
    possible, never more than ``pdu_limit`` bytes, within ``pdu_seconds``.

    It also re-arms TCP_QUICKACK after each read (Linux leaves quick-ACK mode by
    itself), so that the sender's next segment is never held back by a delayed ACK.
    """

    pdu_limit: int
    pdu_seconds: float

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` whole within the time allowed, or drop the association."""
        if nr_bytes > self.pdu_limit:
            return self._drop(
                f"PDU of {nr_bytes} bytes, more than the {self.pdu_limit} negotiated",
                abort_pdu(reason=0x06),
            )
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        deadline = 0.0
        while read < nr_bytes:
            try:
                count = sock.recv_into(view[read:])
            except (BlockingIOError, ssl.SSLWantReadError):  # SO_RCVTIMEO expired
                return self._drop(f"nothing received for {self.pdu_seconds:g} s")
            except OSError as exc:
                return self._drop(f"PDU not received: {exc or type(exc).__name__}")
            if count == 0:  # connection closed: return what there is, as pynetdicom does
                return buffer[:read]
            read += count
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            if read < nr_bytes:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.pdu_seconds
                elif now > deadline:
                    return self._drop(f"PDU not complete within {self.pdu_seconds:g} s")
        return buffer

    def _drop(self, reason: str, answer: bytes = b"") -> bytearray:
        """Log, send ``answer`` (best effort) and close; the short read that pynetdicom
        gets back makes it end the association (transport closed)."""
        requestor = self.assoc.requestor
        logger.warning(
            "association aborted: " + reason,
            extra={"client": requestor.address, "calling_aet": requestor.ae_title},
        )
        sock = self.socket
        if sock is not None:
            if answer:
                with contextlib.suppress(OSError):
                    sock.sendall(answer)
            close_socket(self)
        return bytearray()


class PrefetchedSocket(GuardedSocket):
    """Serves ``prefetched`` (the A-ASSOCIATE-RQ the listener read) to pynetdicom's
    reads, then turns into a :class:`GuardedSocket`."""

    prefetched: bytes

    @property
    def ready(self) -> bool:
        """Always True: the prefetched request is waiting, whatever the socket says."""
        return True

    def recv(self, nr_bytes: int) -> bytearray:
        """Serve the prefetched bytes first, then read as a :class:`GuardedSocket`."""
        data, self.prefetched = self.prefetched[:nr_bytes], self.prefetched[nr_bytes:]
        if not self.prefetched:
            self.__class__ = GuardedSocket  # type: ignore[assignment]
        return bytearray(data)


def guard(assoc: Association, request: bytes, pdu_limit: int, pdu_seconds: float) -> None:
    """Make ``assoc``'s socket a :class:`PrefetchedSocket` serving ``request`` first."""
    prefetched = swap_socket_class(assoc, PrefetchedSocket)
    prefetched.prefetched = request
    prefetched.pdu_limit = pdu_limit
    prefetched.pdu_seconds = pdu_seconds
