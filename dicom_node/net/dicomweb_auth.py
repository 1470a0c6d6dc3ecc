"""Connecting to a DICOMweb peer: credentials, TLS and timeouts for `dicomweb_client`.

A :class:`DicomwebConnector` per peer hands out a ``DICOMwebClient`` on a fresh
``requests`` session for each unit of work (a delivery batch, a completion scan, a
retrieval), so that a rotated password file or token file is picked up without a
restart. Secrets never live in the config file: a basic-auth password comes from an
environment variable or a file, a bearer token from a file or a command (``gcloud auth
print-access-token``), cached for ``refresh_seconds``. dicomweb-client's own retries
are off: the delivery queue retries with its backoff, and a scan simply runs again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import requests
from dicomweb_client import DICOMwebClient

from dicom_node.config import BasicAuth, BearerAuth, ClientCertificateAuth, DicomwebAuth
from dicom_node.errors import PeerError

logger = logging.getLogger(__name__)

ResponseHook = Callable[..., Any]
# A token or password file larger than this is not a credential (and is not read whole).
_MAX_SECRET_BYTES = 64 * 1024


class DicomwebError(PeerError):
    """A DICOMweb request to ``peer`` did not get a usable answer; ``http_status`` is the
    HTTP status when one came back (None: no connection, timeout, or no credentials)."""

    def __init__(self, peer: str, reason: str, http_status: int | None = None) -> None:
        self.peer = peer
        self.http_status = http_status
        super().__init__(f"DICOMweb peer {peer}: {reason}", reason)


class HttpEndpoint(Protocol):
    """What a connector needs of a config entry: a DICOMweb peer, or a notification's
    receiver (`dicom_node.config.NotificationBase`), which take the same keys."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def auth(self) -> DicomwebAuth: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def verify_tls(self) -> bool: ...
    @property
    def connect_timeout_seconds(self) -> float: ...
    @property
    def read_timeout_seconds(self) -> float: ...


EndpointT = TypeVar("EndpointT", bound=HttpEndpoint)


def read_secret(path: Path, peer: str, key: str) -> str:
    """One line of text from a credential file (a password, a token, an HMAC secret).

    Raises
    ------
    DicomwebError
        When the file cannot be read, is empty, too large or holds several lines; the
        reason names ``key`` and the file.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise DicomwebError(peer, f"cannot read {key} {str(path)!r}: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace").strip()
    if not text or len(data) > _MAX_SECRET_BYTES or "\n" in text:
        raise DicomwebError(peer, f"{key} {str(path)!r} does not hold one line of text")
    return text


class ConfiguredTlsSession(requests.Session):
    """A session whose own ``verify`` (a configured ``ca_file``, or ``verify_tls =
    false``) wins over ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``: plain requests lets
    the environment's bundle replace it (psf/requests#3829), so that on a host with a
    system-wide bundle the peer's own CA was ignored and its certificate refused."""

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        """The environment's proxies and bundle, except a verify set on the session."""
        settings: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert
        )
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


class DicomwebConnector(Generic[EndpointT]):
    """Clients for one DICOMweb peer (or another HTTP endpoint), with its credentials and
    TLS settings.

    Parameters
    ----------
    peer
        The peer's config.
    """

    def __init__(self, peer: EndpointT) -> None:
        self.peer = peer
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()

    @contextmanager
    def client(self, response_hook: ResponseHook | None = None) -> Iterator[DICOMwebClient]:
        """A client on a new session, closed on exit; ``response_hook`` sees every HTTP
        response (the STOW-RS sender reads per-instance outcomes from it).

        Raises
        ------
        DicomwebError
            When the credentials cannot be read (file, environment variable, command).
        """
        session = self.session()
        if response_hook is not None:
            session.hooks["response"].append(response_hook)
        try:
            client = DICOMwebClient(
                self.peer.url,
                session=session,
                timeout=(self.peer.connect_timeout_seconds, self.peer.read_timeout_seconds),
            )
            client.set_http_retry_params(retry=False)
            yield client
        finally:
            session.close()

    def session(self) -> requests.Session:
        """A ``requests`` session carrying the peer's TLS settings and credentials.

        Raises
        ------
        DicomwebError
            When the credentials cannot be read.
        """
        peer = self.peer
        session = ConfiguredTlsSession()
        session.verify = str(peer.ca_file) if peer.ca_file else peer.verify_tls
        # Per-instance STOW-RS outcomes come back as JSON when asked for; QIDO and WADO
        # requests set their own Accept header.
        session.headers["Accept"] = "application/dicom+json"
        auth = peer.auth
        if isinstance(auth, BasicAuth):
            session.auth = (auth.username, self._password(auth))
        elif isinstance(auth, BearerAuth):
            session.headers["Authorization"] = f"Bearer {self._bearer_token(auth)}"
        elif isinstance(auth, ClientCertificateAuth):
            session.cert = (str(auth.cert_file), str(auth.key_file))
        return session

    def _password(self, auth: BasicAuth) -> str:
        if auth.password_file is not None:
            return read_secret(auth.password_file, self.peer.name, "auth.password_file")
        assert auth.password_env is not None  # the config allows exactly one source
        value = os.environ.get(auth.password_env)
        if not value:
            raise DicomwebError(
                self.peer.name,
                f"auth.password_env: environment variable {auth.password_env} is not set",
            )
        return value

    def _bearer_token(self, auth: BearerAuth) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._token_expires:
                self._token = self._fetch_token(auth)
                self._token_expires = time.monotonic() + auth.refresh_seconds
            return self._token

    def _fetch_token(self, auth: BearerAuth) -> str:
        if auth.token_file is not None:
            return read_secret(auth.token_file, self.peer.name, "auth.token_file")
        assert auth.token_command is not None  # the config allows exactly one source
        try:
            run = subprocess.run(
                auth.token_command,
                capture_output=True,
                timeout=auth.command_timeout_seconds,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DicomwebError(self.peer.name, f"auth.token_command failed: {exc}") from None
        token = run.stdout.decode("utf-8", errors="replace").strip()
        if run.returncode != 0 or not token or "\n" in token:
            raise DicomwebError(
                self.peer.name,
                f"auth.token_command exited with {run.returncode} and printed "
                f"{len(token.splitlines())} line(s), not one token",
            )
        return token
