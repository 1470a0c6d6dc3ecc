"""HTTP receivers for notification tests: a webhook and a FHIR server stand-in, in the test
process, on free loopback ports (plain HTTP or TLS), stopped and started at will.

The webhook receiver keeps what a careful receiver keeps: each accepted document once
per ``Idempotency-Key`` (a repeat is answered 200 and counted, not kept again), and
refuses a body whose HMAC signature does not match its own copy of the secret. It can
answer chosen statuses first (``answers``), answer late (``delay_seconds``: the sender
times out after the document was accepted), and run a check on each accepted document
(``on_accept``).

The FHIR stand-in validates every resource it is sent with `fhir.resources` (R4B),
honours ``ifNoneExist``/``If-None-Exist`` by identifier, takes transaction Bundles at
its base URL and single resources at ``/<type>``, and checks that a DiagnosticReport's
results are Observations it holds (or, in a Bundle, the Bundle's entries).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from tests.conftest import get_free_port


@dataclass
class Accepted:
    """One document a receiver accepted."""

    key: str
    document: Any
    headers: dict[str, str]


@dataclass
class Receiver:
    """What a receiver got and how it answers (see the module docstring)."""

    port: int
    secret: str | None = None
    signature_header: str = "X-Signature-256"
    answers: list[int] = field(default_factory=list)
    delay_seconds: float = 0.0
    on_accept: Callable[[Any], None] | None = None
    accepted: list[Accepted] = field(default_factory=list)
    repeats: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    def keys(self) -> list[str]:
        with self.lock:
            return [a.key for a in self.accepted]

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """One POST: the status and the JSON answer."""
        with self.lock:
            self.requests += 1
            if self.answers:
                return self.answers.pop(0), {"error": "scripted"}
            if self.secret is not None:
                expected = (
                    "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
                )
                if not hmac.compare_digest(
                    headers.get(self.signature_header.lower(), ""), expected
                ):
                    self.refused.append("bad signature")
                    return 401, {"error": "bad signature"}
            key = headers.get("idempotency-key", "")
            if not key:
                self.refused.append("no idempotency key")
                return 400, {"error": "no Idempotency-Key"}
            if key in {a.key for a in self.accepted}:
                self.repeats[key] += 1
                return 200, {"duplicate": True}
            document = json.loads(body)
            if self.on_accept is not None:
                self.on_accept(document)
            self.accepted.append(Accepted(key, document, headers))
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return 200, {"ok": True}


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer, extra = self.server.receiver_handle(self.path, headers, body)  # type: ignore[attr-defined]
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting (a test of lost answers)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(receiver: Any, handle: Callable[..., tuple[int, Any, dict[str, str]]]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), _Handler)
    server.daemon_threads = True
    server.receiver_handle = handle  # type: ignore[attr-defined]
    if receiver.tls is not None:
        server.socket = receiver.tls.wrap_socket(server.socket, server_side=True)
    receiver.server = server
    threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()


def start(receiver: Any) -> None:
    """Listen (again) on the receiver's port."""
    if isinstance(receiver, FhirServer):
        _serve(receiver, receiver.handle)
    else:
        _serve(receiver, lambda path, headers, body: (*receiver.handle(path, headers, body), {}))


def stop(receiver: Any) -> None:
    """Stop listening: connections are refused until :func:`start`."""
    if receiver.server is not None:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.server = None


def tls_context(pki: Path) -> ssl.SSLContext:
    """A server context with the test PKI's ``node`` certificate (for 127.0.0.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "node.crt", pki / "node.key")
    return context


@contextmanager
def run_receiver(running: bool = True, **settings: Any) -> Iterator[Receiver]:
    """A webhook receiver on a free port (listening unless ``running`` is False);
    always stopped."""
    receiver = Receiver(port=get_free_port(), **settings)
    if running:
        start(receiver)
    try:
        yield receiver
    finally:
        stop(receiver)


@dataclass
class FhirServer:
    """The FHIR stand-in: resources by type and id, every validation problem kept."""

    port: int
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    tls: ssl.SSLContext | None = None
    _next_id: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.resources.values() if r["resourceType"] == kind]

    def _find(self, condition: str) -> dict[str, Any] | None:
        """The resource ``identifier=system|value`` finds, if any."""
        system, _, value = condition.removeprefix("identifier=").partition("|")
        for resource in self.resources.values():
            for identifier in resource.get("identifier", []):
                if identifier.get("system") == system and identifier.get("value") == value:
                    return resource
        return None

    def _validate(self, data: dict[str, Any]) -> str | None:
        try:
            get_fhir_model_class(data.get("resourceType", "")).model_validate(data)
        except (ValidationError, KeyError, ValueError) as exc:
            return f"{data.get('resourceType')}: {exc}"
        return None

    def _create(self, data: dict[str, Any], condition: str | None) -> tuple[dict[str, Any], bool]:
        existing = self._find(condition) if condition else None
        if existing is not None:
            return existing, False
        self._next_id += 1
        stored = {**data, "id": str(self._next_id)}
        self.resources[f"{data['resourceType']}/{stored['id']}"] = stored
        return stored, True

    def _check_results(self, report: dict[str, Any], known: set[str]) -> None:
        for result in report.get("result", []):
            if result["reference"] not in known:
                self.problems.append(f"report result {result['reference']} is not an Observation")

    def handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        fhir = {"Content-Type": "application/fhir+json"}
        data = json.loads(body)
        with self.lock:
            self.posts.append(path)
            problem = self._validate(data)
            if problem:
                self.problems.append(problem)
                return 400, {"resourceType": "OperationOutcome"}, fhir
            if path == "/fhir" and data["resourceType"] == "Bundle":
                status, answer = self._transaction(Bundle.model_validate(data), data)
                return status, answer, fhir
            kind = path.removeprefix("/fhir/")
            if kind != data["resourceType"]:
                self.problems.append(f"{data['resourceType']} posted to {path}")
                return 400, {"resourceType": "OperationOutcome"}, fhir
            if kind == "DiagnosticReport":
                known = {k for k, r in self.resources.items() if r["resourceType"] == "Observation"}
                self._check_results(data, known)
            stored, created = self._create(data, headers.get("if-none-exist"))
            location = f"{self.url}/{kind}/{stored['id']}/_history/1"
            return (201 if created else 200), stored, {**fhir, "Location": location}

    def _transaction(self, bundle: Bundle, data: dict[str, Any]) -> tuple[int, Any]:
        if bundle.type != "transaction":
            self.problems.append(f"bundle of type {bundle.type}")
            return 400, {"resourceType": "OperationOutcome"}
        references: dict[str, str] = {}
        answers = []
        for entry in data["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "DiagnosticReport":
                self._check_results(resource, set(references))
                resource = {
                    **resource,
                    "result": [
                        {"reference": references[r["reference"]]}
                        for r in resource.get("result", [])
                        if r["reference"] in references
                    ],
                }
            stored, created = self._create(resource, entry["request"].get("ifNoneExist"))
            references[entry["fullUrl"]] = f"{stored['resourceType']}/{stored['id']}"
            answers.append({"response": {"status": "201 Created" if created else "200 OK"}})
        return 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}


@contextmanager
def run_fhir_server() -> Iterator[FhirServer]:
    """The FHIR stand-in on a free port; always stopped."""
    server = FhirServer(port=get_free_port())
    start(server)
    try:
        yield server
    finally:
        stop(server)
