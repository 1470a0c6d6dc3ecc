"""OHIF and DICOMweb from one origin, as a hospital deploys them behind one web server.

OHIF's built ``dist/`` is a single-page app: every route (``/viewer?...``) must answer
with ``index.html``, and its data source must be reachable without CORS. A small
threaded HTTP server does both: it serves the static files (with our ``app-config.js``
in place of the shipped one), proxies ``/dicom-web/...`` to Orthanc's DICOMweb plugin,
and sets the cross-origin isolation headers OHIF's own server sets (SharedArrayBuffer
for its decoders and volume loading).
"""

from __future__ import annotations

import logging
import mimetypes
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)

DICOMWEB_PREFIX = "/dicom-web/"
APP_CONFIG = Path(__file__).resolve().parent / "app-config.js"
PROXY_TIMEOUT_S = 60.0
SHUTDOWN_POLL_S = 0.05
# Request headers passed on to Orthanc, and response headers passed back.
FORWARDED_REQUEST_HEADERS = ("Accept", "Content-Type")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Length")
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


class OhifSiteHandler(BaseHTTPRequestHandler):
    """Static files with single-page fallback, and the DICOMweb proxy."""

    server: OhifSiteServer

    def do_GET(self) -> None:
        if self.path.startswith(DICOMWEB_PREFIX):
            self._proxy()
        else:
            self._static()

    def do_POST(self) -> None:
        if self.path.startswith(DICOMWEB_PREFIX):
            self._proxy()
        else:
            self._answer(HTTPStatus.METHOD_NOT_ALLOWED, b"", "text/plain")

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("ohif site: " + format, *args)

    def _static(self) -> None:
        route = self.path.split("?", 1)[0].split("#", 1)[0]
        if route == "/app-config.js":
            path = self.server.app_config
        else:
            candidate = (self.server.dist / route.lstrip("/")).resolve()
            inside = candidate.is_relative_to(self.server.dist)
            path = candidate if inside and candidate.is_file() else self.server.dist / "index.html"
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._answer(HTTPStatus.OK, path.read_bytes(), content_type)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(
            self.server.upstream + self.path, data=body, method=self.command
        )
        for name in FORWARDED_REQUEST_HEADERS:
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S) as response:
                status, payload, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, payload, headers = error.code, error.read(), error.headers
        self.send_response(status)
        for name in FORWARDED_RESPONSE_HEADERS:
            if name in headers and name != "Content-Length":
                self.send_header(name, headers[name])
        self._finish(payload)

    def _answer(self, status: HTTPStatus, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self._finish(payload)

    def _finish(self, payload: bytes) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)


class OhifSiteServer(ThreadingHTTPServer):
    """The one origin: OHIF's ``dist`` folder, our config and the DICOMweb upstream."""

    daemon_threads = True

    def __init__(self, port: int, dist: Path, app_config: Path, upstream: str) -> None:
        super().__init__(("127.0.0.1", port), OhifSiteHandler)
        self.dist = dist.resolve()
        self.app_config = app_config
        self.upstream = upstream.rstrip("/")


@contextmanager
def serve_ohif(
    dist: Path, upstream: str, port: int, app_config: Path = APP_CONFIG
) -> Iterator[str]:
    """Serve OHIF and proxy DICOMweb on 127.0.0.1:``port``; yields the site's base URL.

    ``upstream`` is the server whose ``/dicom-web/`` the site forwards to (Orthanc's
    HTTP root). The server thread always stops when the context exits.

    Raises
    ------
    FileNotFoundError
        When ``dist`` holds no ``index.html`` (``npm ci`` has not run).
    """
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF build at {dist}: run npm ci --prefix tests/viewer")
    server = OhifSiteServer(port, dist, app_config, upstream)
    thread = threading.Thread(
        target=server.serve_forever, args=(SHUTDOWN_POLL_S,), name="ohif-site", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
