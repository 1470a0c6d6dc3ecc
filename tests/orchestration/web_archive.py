"""A scriptable DICOMweb archive for STOW-RS delivery tests: an HTTP server in the test
process that answers each request with the next scripted answer (status, headers,
body, delay), the way `tests.orchestration.archive` scripts a Storage SCP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import get_free_port


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class WebArchive:
    """The answers still to give, and the requests received (path, headers, body)."""

    port: int
    answers: list[Answer] = field(default_factory=list)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def next_answer(self) -> Answer:
        with self.lock:
            return self.answers.pop(0) if self.answers else Answer(200)


def _handler(archive: WebArchive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.headers.get("Transfer-Encoding") == "chunked":
                body = self._read_chunked()
            else:
                body = self.rfile.read(length)
            with archive.lock:
                archive.received.append((self.path, dict(self.headers), body))
            answer = archive.next_answer()
            time.sleep(answer.delay)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def _read_chunked(self) -> bytes:
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def run_web_archive() -> Iterator[WebArchive]:
    """Start the archive on a free loopback port; always shut it down."""
    archive = WebArchive(get_free_port())
    server = ThreadingHTTPServer(("127.0.0.1", archive.port), _handler(archive))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield archive
    finally:
        server.shutdown()
        server.server_close()
