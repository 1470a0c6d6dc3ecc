"""What a new connection must get through before pynetdicom sees it, on its own thread.

In order, within ``node.association_request_timeout_seconds`` of the accept:

1. the TLS handshake, when TLS is on (the address allow-list was checked at accept);
2. the A-ASSOCIATE-RQ's header and AE titles: the called AE title must be the node's
   (``security.check_called_aet``) and the calling one allowed
   (``security.allowed_calling_aets``), or the node answers A-ASSOCIATE-RJ without
   reading further than the request's length;
3. the rest of the request, at most 1 MiB, whose presentation contexts are counted
   (at most 128, of at most 128 transfer syntaxes each) but not parsed.

Only then does pynetdicom decode and negotiate it. A connection that fails a step is
answered where the protocol has an answer, closed, and logged once with the client's
address and the reason (throttled per client, so that a client connecting in a loop does
not flood the log).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from dicom_node.config import NodeConfig
from dicom_node.log_safety import PerClientThrottle
from dicom_node.net.association_request import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_ALLOWED,
    FIXED_FIELDS_BYTES,
    MAX_PRESENTATION_CONTEXTS,
    MAX_TRANSFER_SYNTAXES,
    NOT_ACCEPTABLE,
    REJECT_REASONS,
    ConnectionDropped,
    RequestStart,
    count_items,
    discard,
    read_exactly,
    read_request_start,
    reject_pdu,
)
from dicom_node.net.pdu_guard import bound_waits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    """A connection through the gate: its socket (TLS-wrapped where TLS is on) and the
    A-ASSOCIATE-RQ read from it, to be handed to pynetdicom."""

    sock: socket.socket
    request: bytes


def _tls_failure(exc: Exception, seconds: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {seconds:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__


class AssociationGate:
    """Admits or refuses each new connection; :meth:`admit` runs on its thread.

    Parameters
    ----------
    config
        The node config (``node`` timeouts and AE title, ``security``).
    ssl_context
        The listener's TLS context, or None without TLS.
    throttle
        Limits refusal log lines per client (shared with the accept loop).
    """

    def __init__(
        self,
        config: NodeConfig,
        ssl_context: ssl.SSLContext | None,
        throttle: PerClientThrottle,
    ) -> None:
        self.ae_title = config.node.ae_title
        self.timeout = config.node.association_request_timeout_seconds
        self.network_timeout = config.node.network_timeout_seconds
        self.check_called_aet = config.security.check_called_aet
        self.allowed_calling = frozenset(config.security.allowed_calling_aets)
        self.ssl_context = ssl_context
        self.throttle = throttle

    def log_refusal(self, event: str, client: str, **fields: Any) -> None:
        """A refusal's log line, unless this client had one for this event just now."""
        skipped = self.throttle.admit(event, client)
        if skipped is None:
            return
        extra = {"client": client, **fields}
        if skipped:
            extra["not_logged_since"] = skipped
        logger.warning(event, extra=extra)

    def admit(self, sock: socket.socket, client: str) -> Admitted | None:
        """Run the gate on a freshly accepted ``sock``; None when refused (answered where
        the protocol allows, logged, and closed)."""
        deadline = time.monotonic() + self.timeout
        try:
            if self.ssl_context is not None:
                sock = self._handshake(sock, deadline)
            admitted = self._read_request(sock, client, deadline)
        except ConnectionDropped as exc:
            if exc.event is None:
                logger.debug(exc.reason, extra={"client": client})
            else:
                self.log_refusal(exc.event, client, reason=exc.reason)
            _send(sock, exc.answer)
            admitted = None
        if admitted is None:
            _close(sock)
        else:
            bound_waits(admitted.sock, self.network_timeout)
        return admitted

    def _read_request(self, sock: socket.socket, client: str, deadline: float) -> Admitted | None:
        start = read_request_start(sock, deadline)
        rest_length = start.length - FIXED_FIELDS_BYTES
        refusal = self._refusal(start)
        if refusal is not None:
            discard(sock, rest_length, deadline)
            self._reject(sock, client, start, refusal, REJECT_REASONS[refusal])
            return None
        rest = read_exactly(sock, rest_length, deadline)
        contexts, syntaxes = count_items(rest)
        if contexts > MAX_PRESENTATION_CONTEXTS or syntaxes > MAX_TRANSFER_SYNTAXES:
            reason = (
                f"{contexts} presentation contexts (at most {MAX_PRESENTATION_CONTEXTS}), "
                f"up to {syntaxes} transfer syntaxes in one (at most {MAX_TRANSFER_SYNTAXES})"
            )
            self._reject(sock, client, start, NOT_ACCEPTABLE, reason)
            return None
        return Admitted(sock, start.head + rest)

    def _handshake(self, sock: socket.socket, deadline: float) -> socket.socket:
        assert self.ssl_context is not None
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            return self.ssl_context.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as exc:
            reason = _tls_failure(exc, self.timeout)
            raise ConnectionDropped(reason, event="TLS handshake failed") from None

    def _refusal(self, start: RequestStart) -> tuple[int, int, int] | None:
        if self.check_called_aet and start.called_ae_title != self.ae_title:
            return CALLED_AE_NOT_RECOGNISED
        if self.allowed_calling and start.calling_ae_title not in self.allowed_calling:
            return CALLING_AE_NOT_ALLOWED
        return None

    def _reject(
        self,
        sock: socket.socket,
        client: str,
        start: RequestStart,
        refusal: tuple[int, int, int],
        reason: str,
    ) -> None:
        self.log_refusal(
            "association rejected: " + reason,
            client,
            called_aet=start.called_ae_title,
            calling_aet=start.calling_ae_title,
        )
        _send(sock, reject_pdu(*refusal))


def _send(sock: socket.socket, data: bytes) -> None:
    """Best effort: the peer may be gone already."""
    if data:
        with contextlib.suppress(OSError):
            sock.sendall(data)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
