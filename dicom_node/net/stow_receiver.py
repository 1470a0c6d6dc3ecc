"""The STOW-RS receiver: studies sent over HTTPS, stored by the same path as a C-STORE.

``[dicomweb] enabled = true`` starts it in the listener role: ``POST /studies`` and
``POST /studies/{StudyInstanceUID}`` with a ``multipart/related;
type="application/dicom"`` body. The body is parsed as it streams in; each part is
written to a temp file in the spool's ``incoming/`` folder, and as soon as a part is
complete it goes through `dicom_node.net.scp.StoreHandler.store_file` (fsync, header
read, rename into the spool, rows committed; a few parts at once, in threads), so
memory stays flat and no instance waits for the rest of the request. The answer lists
each instance (PS3.18 10.5.3): stored ones in ReferencedSOPSequence, refused ones in
FailedSOPSequence with the C-STORE status as FailureReason; 200 when all were stored,
202 when some, 409 when none.

Before a byte of the body is read: the client's address must be allowed (403), a
bearer token from ``tokens_file`` must be presented when one is configured (401; with
``tls.ca_file`` the TLS layer has already required a client certificate), the content
type must be multipart/related of application/dicom (415), a declared length must
fit ``max_body_mb`` (413), and the spool must keep ``node.min_free_disk_mb`` free after
it (503 with Retry-After, as C-STORE answers 0xA700). A body that grows past the limit
(413), stalls longer than ``node.network_timeout_seconds`` (408), or ends before its
closing boundary (400) loses only the part in progress; the parts already stored are
listed in the answer.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import uvicorn
from pydicom import Dataset
from pydicom.filereader import read_file_meta_info
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from dicom_node.config import DicomwebSection, NodeConfig
from dicom_node.intake.spool import Spool
from dicom_node.net.reception_audit import Reception
from dicom_node.net.scp import PROCESSING_FAILURE, SUCCESS, StoreHandler, server_ssl_context
from dicom_node.uid_syntax import is_uid

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON = "application/dicom+json"
# A part that is not a DICOM Part 10 file (no preamble and file meta information).
NOT_PART_10 = 0xC210
# A part of another media type (application/dicom+json metadata, bulk data, ...).
MEDIA_TYPE_NOT_SUPPORTED = 0x0122
START_TIMEOUT_S = 30.0
# Seconds an HTTP connection may stay silent (before its first request, or between two).
KEEP_ALIVE_S = 5
# Parts of one request stored at once.
PARALLEL_STORES = 4
# Retry-After (seconds) of a 503: the spool is full or cannot be written.
RETRY_LATER_S = 60
STOP_GRACE_S = 30.0


@dataclass
class _Part:
    """A part of the body: its temp file (None when its media type is refused)."""

    path: Path | None
    status: int = SUCCESS
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


@dataclass
class _PartWriter:
    """python-multipart callbacks that write each part to a temp file in ``folder``."""

    folder: Path
    done: list[_Part] = field(default_factory=list)
    ended: bool = False
    _headers: dict[str, str] = field(default_factory=dict)
    _name: bytes = b""
    _value: bytes = b""
    _file: IO[bytes] | None = None
    _path: Path | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._value = {}, b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._name.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        media_type, _ = parse_options_header(self._headers.get("content-type", DICOM_MEDIA_TYPE))
        if media_type.decode("latin-1").lower() != DICOM_MEDIA_TYPE:
            self._path = None
            return
        fd, name = tempfile.mkstemp(dir=self.folder, prefix="stow-", suffix=".dcm")
        self._file, self._path = os.fdopen(fd, "wb"), Path(name)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])

    def _end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.done.append(_Part(self._path))
        else:
            self.done.append(_Part(None, MEDIA_TYPE_NOT_SUPPORTED))
        self._path = None

    def _finished(self) -> None:
        self.ended = True

    def discard(self) -> None:
        """Remove the part in progress and any complete part not yet stored."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for path in [self._path, *(part.path for part in self.done)]:
            if path is not None:
                path.unlink(missing_ok=True)
        self._path = None
        self.done.clear()


class _Stores:
    """Parts being stored, at most ``depth`` at once (their fsyncs overlap, as those of
    several associations do), with their outcomes in the order of the body."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._tasks: list[asyncio.Future[_Part]] = []

    async def add(self, store: Awaitable[_Part]) -> None:
        """Start storing a part; wait while ``depth`` are being stored."""
        self._tasks.append(asyncio.ensure_future(store))
        running = [task for task in self._tasks if not task.done()]
        if len(running) >= self.depth:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    async def outcomes(self) -> list[_Part]:
        """Every part's outcome, once all are stored."""
        return list(await asyncio.gather(*self._tasks))


class BearerTokens:
    """The tokens allowed to write, one per line of ``path`` (``#`` starts a comment);
    re-read when the file changes, so that a token is revoked without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._lock = threading.Lock()

    def _current(self) -> tuple[bytes, ...]:
        try:
            info = self.path.stat()
        except OSError as exc:
            logger.error("cannot read dicomweb.tokens_file", extra={"error": exc})
            return ()
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._stamp:
                lines = self.path.read_text(encoding="utf-8").splitlines()
                self._tokens = tuple(
                    line.strip().encode() for line in lines if line.strip()[:1] not in {"", "#"}
                )
                self._stamp = stamp
            return self._tokens

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the tokens."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = token.strip().encode()
        # Compare against every token, so that the time taken does not say which matched.
        matches = [hmac.compare_digest(given, known) for known in self._current()]
        return any(matches)


def _error(status: int, reason: str, log: dict[str, Any]) -> Response:
    logger.warning("STOW-RS refused", extra={**log, "http_status": status, "reason": reason})
    headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": str(RETRY_LATER_S)}}
    return Response(
        reason + "\n", status_code=status, media_type="text/plain", headers=headers.get(status)
    )


def stow_response(parts: list[_Part], http_status: int | None = None) -> Response:
    """The STOW-RS answer for ``parts``: 200, 202 or 409 unless ``http_status`` is given."""
    answer = Dataset()
    stored, failed = [], []
    for part in parts:
        item = Dataset()
        item.ReferencedSOPClassUID = part.sop_class_uid or None
        item.ReferencedSOPInstanceUID = part.sop_instance_uid or None
        if part.status == SUCCESS:
            stored.append(item)
        else:
            item.FailureReason = part.status
            failed.append(item)
    answer.ReferencedSOPSequence = stored
    answer.FailedSOPSequence = failed
    if http_status is None:
        http_status = 200 if not failed else 202 if stored else 409
    return JSONResponse(answer.to_json_dict(), status_code=http_status, media_type=DICOM_JSON)


class StowApp:
    """The ASGI application (Starlette) and the checks in front of the store path.

    Parameters
    ----------
    config
        The node config (``dicomweb`` and ``node.network_timeout_seconds``).
    handler
        The listener's C-STORE handler, whose ``store_file`` stores each part.
    spool
        Where parts are written while they arrive (its ``incoming/`` folder).
    """

    def __init__(self, config: NodeConfig, handler: StoreHandler, spool: Spool) -> None:
        settings = config.dicomweb
        self.settings = settings
        self.handler = handler
        self.spool = spool
        self.read_timeout = config.node.network_timeout_seconds
        self.max_body = int(settings.max_body_mb * 1024 * 1024)
        self.networks = tuple(ip_network(h, strict=False) for h in settings.allowed_hosts)
        self.tokens = BearerTokens(settings.tokens_file) if settings.tokens_file else None
        self._in_flight = 0
        self.app = Starlette(
            routes=[
                Route("/studies", self.stow, methods=["POST"]),
                Route("/studies/{study}", self.stow, methods=["POST"]),
            ]
        )

    def _refusal(self, request: Request, log: dict[str, Any]) -> Response | None:
        """The answer to a request refused before its body is read; None to go on."""
        client = request.client.host if request.client else ""
        if self.networks and not any(ip_address(client) in n for n in self.networks):
            return _error(403, "client address not allowed", log)
        if self.tokens is not None and not self.tokens.allows(request.headers.get("authorization")):
            return _error(401, "a valid bearer token is required", log)
        media_type, options = parse_options_header(request.headers.get("content-type", ""))
        part_type = options.get(b"type", DICOM_MEDIA_TYPE.encode()).decode("latin-1").lower()
        if media_type != b"multipart/related" or part_type != DICOM_MEDIA_TYPE:
            return _error(415, 'the body must be multipart/related; type="application/dicom"', log)
        if not options.get(b"boundary"):
            return _error(400, "the content type has no boundary", log)
        length = request.headers.get("content-length", "")
        declared = int(length) if length.isdigit() else 0
        if declared > self.max_body:
            return _error(413, f"the body is larger than max_body_mb ({self.max_body} bytes)", log)
        if self.spool.free_bytes() - declared < self.handler.min_free_bytes:
            # Like C-STORE's 0xA700: the sender retries later, nothing is half-written.
            return _error(503, "free disk below node.min_free_disk_mb", log)
        return None

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return self._in_flight

    async def stow(self, request: Request) -> Response:
        """``POST /studies[/{study}]``: store every part; the STOW-RS answer."""
        self._in_flight += 1  # only the event loop's thread changes it
        try:
            return await self._stow(request)
        finally:
            self._in_flight -= 1

    async def _stow(self, request: Request) -> Response:
        study = request.path_params.get("study")
        log: dict[str, Any] = {"client": request.client.host if request.client else None}
        if study is not None and not is_uid(study):
            # Checked before it is logged: no control character from the network in a log.
            return _error(400, "the URL's study is not a Study Instance UID", log)
        log["study_uid"] = study
        refusal = self._refusal(request, log)
        if refusal is not None:
            return refusal
        _, options = parse_options_header(request.headers["content-type"])
        writer = _PartWriter(self.spool.incoming_dir)
        parser = MultipartParser(options[b"boundary"], writer.callbacks())
        reception = Reception(None, log["client"], "STOW-RS")
        stores = _Stores(PARALLEL_STORES)
        failure: tuple[int, str] | None = None
        received = 0
        try:
            async for chunk in self._chunks(request):
                # Parts that end within the limit are stored, whatever the chunking.
                parser.write(chunk[: max(0, self.max_body - received)])
                received += len(chunk)
                for part in writer.done:
                    await stores.add(self._store(part, study, log, reception))
                writer.done.clear()
                if received > self.max_body:
                    failure = (413, "the body grew past max_body_mb")
                    break
            else:
                parser.finalize()
                if not writer.ended:
                    failure = (400, "the body ended before its last boundary")
        except MultipartParseError as exc:
            failure = (400, f"malformed multipart body: {exc}")
        except TimeoutError:
            failure = (408, "the body stalled")
        except ClientDisconnect:
            failure = (400, "the sender disconnected")
        except OSError as exc:  # writing a part to incoming/: disk full, permissions
            failure = (503, f"cannot write the incoming part: {exc.strerror}")
        finally:
            writer.discard()
            stored = await stores.outcomes()  # every part handed over is finished
            self.handler.reception.reception_ended(reception)  # its audit lines: counts per study
        if failure is not None:
            return self._after_failure(stored, *failure, log)
        logger.info(
            "STOW-RS request stored",
            extra={**log, "instances": len(stored), "failed": sum(p.status != 0 for p in stored)},
        )
        return stow_response(stored)

    def _after_failure(
        self, stored: list[_Part], status: int, reason: str, log: dict[str, Any]
    ) -> Response:
        """A request cut short: the reason, and the parts stored before it."""
        if not stored:
            return _error(status, reason, log)
        logger.warning(
            "STOW-RS request cut short",
            extra={**log, "http_status": status, "reason": reason, "stored": len(stored)},
        )
        return stow_response(stored, status)

    async def _chunks(self, request: Request) -> AsyncIterator[bytes]:
        """The body as it arrives; TimeoutError when the sender stalls."""
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), self.read_timeout)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk

    async def _store(
        self, part: _Part, study: str | None, log: dict[str, Any], reception: Reception
    ) -> _Part:
        if part.path is None:
            logger.warning("STOW-RS part refused: not application/dicom", extra=log)
            return part
        return await run_in_threadpool(self._store_file, part.path, study, log, reception)

    def _store_file(
        self, path: Path, study: str | None, log: dict[str, Any], reception: Reception
    ) -> _Part:
        """Store one complete part by the C-STORE path; its outcome. Never raises."""
        try:
            with self.handler.tracked():
                try:
                    meta = read_file_meta_info(path)
                    transfer_syntax = str(meta.TransferSyntaxUID)
                    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
                    sop_uid = str(meta.MediaStorageSOPInstanceUID)
                except Exception as exc:  # pydicom raises many kinds on input that is not DICOM
                    reason = f"not a DICOM Part 10 file: {type(exc).__name__}"
                    logger.warning("STOW-RS part refused", extra={**log, "reason": reason})
                    return _Part(None, NOT_PART_10)
                part_log = {**log, "sop_uid": sop_uid, "via": "STOW-RS"}
                status = self.handler.store_file(
                    path,
                    transfer_syntax,
                    None,
                    sop_uid,
                    part_log,
                    study_uid=study,
                    reception=reception,
                )
                return _Part(None, status, sop_class, sop_uid)
        except Exception:
            logger.exception("STOW-RS part failed unexpectedly", extra=log)
            return _Part(None, PROCESSING_FAILURE)
        finally:
            path.unlink(missing_ok=True)  # moved into the spool when stored


class QuietConnectionsClosed(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection that has not sent its request
    headers ``timeout_keep_alive`` seconds after it opened (uvicorn waits forever for the
    first request, which would let silent connections fill ``max_connections`` and hold
    up a stop)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self.loop.call_later(self.timeout_keep_alive, self._close_if_silent)

    def _close_if_silent(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            logger.warning("HTTP connection closed: no request", extra={"client": self.client})
            self.transport.close()


class StowReceiver:
    """The running HTTPS server (uvicorn in a thread) of one listener process.

    Parameters
    ----------
    config
        The node config; ``dicomweb`` says where to listen and how to secure it.
    handler
        The listener's C-STORE handler.
    spool
        The listener's spool.
    """

    def __init__(self, config: NodeConfig, handler: StoreHandler, spool: Spool) -> None:
        self.settings: DicomwebSection = config.dicomweb
        self.app = StowApp(config, handler, spool)
        self.server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port = 0``)."""
        if self._socket is None:
            raise RuntimeError("the STOW-RS receiver is not started")
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises
        ------
        OSError, ssl.SSLError
            When the address cannot be bound or the TLS files cannot be read.
        RuntimeError
            When the server does not come up in time.
        """
        settings = self.settings
        config = uvicorn.Config(
            self.app.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            http=QuietConnectionsClosed,
            # uvicorn counts the asking connection itself against the limit.
            limit_concurrency=settings.max_connections + 1,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=int(STOP_GRACE_S),
        )
        config.load()
        if settings.tls is not None:
            config.ssl = server_ssl_context(settings.tls)  # TLS 1.2+, client certs with a CA
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="stow-rs", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("the STOW-RS receiver did not start")
        logger.info(
            "STOW-RS receiver listening",
            extra={"host": settings.host, "port": self.port, "tls": settings.tls is not None},
        )

    def stop(self) -> None:
        """Stop accepting; requests in flight get ``STOP_GRACE_S`` to finish; idle
        connections are closed without waiting."""
        server, thread = self.server, self._thread
        self.server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        deadline = time.monotonic() + STOP_GRACE_S
        while self.app.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        # Requests are answered; idle keep-alive connections (or a TLS close waiting for
        # the peer's close_notify) need not be waited for.
        server.force_exit = True
        thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        logger.info("STOW-RS receiver stopped")
