"""The one-origin site in front of OHIF: static files, single-page fallback, DICOMweb proxy.

Fast tests with a stand-in ``dist`` folder and a small upstream HTTP server, so the
site's behaviour is pinned down even where no browser is installed.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import get_free_port
from tests.viewer.ohif_site import APP_CONFIG, serve_ohif


class _Upstream(BaseHTTPRequestHandler):
    """Answers with what it was asked: method, path, Accept header, body length."""

    def do_GET(self) -> None:
        if self.path.startswith("/dicom-web/missing"):
            self.send_error(404, "no such study")
            return
        self._echo(b"")

    def do_POST(self) -> None:
        self._echo(self.rfile.read(int(self.headers["Content-Length"])))

    def _echo(self, body: bytes) -> None:
        seen = {
            "method": self.command,
            "path": self.path,
            "accept": self.headers.get("Accept"),
            "body": len(body),
        }
        payload = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / "app-config.js").write_text("window.config = 'shipped';")
    (dist / "assets" / "app.js").write_text("console.log(1);")
    (tmp_path / "secret.txt").write_text("outside dist")
    upstream = ThreadingHTTPServer(("127.0.0.1", get_free_port()), _Upstream)
    thread = threading.Thread(target=upstream.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with serve_ohif(dist, f"http://127.0.0.1:{upstream.server_port}", get_free_port()) as url:
            yield url
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(timeout=10)


def _get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_viewer_routes_fall_back_to_the_single_page(site: str) -> None:
    status, headers, body = _get(f"{site}/viewer?StudyInstanceUIDs=1.2.3")
    assert (status, body) == (200, b"<html>OHIF</html>")
    assert headers["Content-Type"] == "text/html"


def test_static_files_and_our_config_are_served(site: str) -> None:
    status, headers, body = _get(f"{site}/assets/app.js")
    assert (status, body, headers["Content-Type"]) == (200, b"console.log(1);", "text/javascript")
    assert _get(f"{site}/app-config.js")[2] == APP_CONFIG.read_bytes()


def test_paths_outside_dist_are_not_served(site: str) -> None:
    assert _get(f"{site}/../secret.txt")[2] == b"<html>OHIF</html>"
    assert _get(f"{site}/%2e%2e/secret.txt")[2] == b"<html>OHIF</html>"


def test_dicomweb_is_proxied_with_its_query_and_accept_header(site: str) -> None:
    accept = 'multipart/related; type="application/octet-stream"'
    status, headers, body = _get(f"{site}/dicom-web/studies/1.2/series?limit=5", accept)
    assert status == 200
    assert headers["Content-Type"] == "application/dicom+json"
    assert json.loads(body) == {
        "method": "GET",
        "path": "/dicom-web/studies/1.2/series?limit=5",
        "accept": accept,
        "body": 0,
    }


def test_upstream_errors_pass_through(site: str) -> None:
    assert _get(f"{site}/dicom-web/missing/study")[0] == 404


def test_every_answer_is_cross_origin_isolated(site: str) -> None:
    for path in ("/viewer", "/dicom-web/studies"):
        headers = _get(site + path)[1]
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_stow_posts_are_proxied_with_their_body(site: str) -> None:
    request = urllib.request.Request(
        f"{site}/dicom-web/studies",
        data=b"x" * 1000,
        headers={"Content-Type": "multipart/related; type=application/dicom"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        seen = json.loads(response.read())
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/dicom-web/studies", 1000)
