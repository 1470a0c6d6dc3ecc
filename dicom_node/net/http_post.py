"""POSTing a document to an HTTP receiver (a webhook, a FHIR server), with one outcome.

The outcome follows the rules of a DICOMweb delivery
(`dicom_node.net.dicomweb_sender.classify_http`): a 2xx answer means the receiver has
it; HTTP 5xx, 408, 425, 429 (its Retry-After kept), a timeout or no connection are
transient; any other answer (4xx, a redirect, which is never followed: a POST must not
turn into a GET elsewhere) is permanent, kept with its status line and the start of the
body. Nothing here raises for the receiver's sake.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import requests

from dicom_node.net.dicomweb_sender import classify_http, printable
from dicom_node.net.store_outcome import Outcome, StoreResult, transient


@dataclass(frozen=True)
class PostResult:
    """What one POST came to: the outcome, the HTTP status (None: no answer), and the
    answer's JSON body when it had one (a FHIR server's resource or Bundle)."""

    result: StoreResult
    http_status: int | None
    body: Any = None
    location: str | None = None


def hmac_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``body`` under ``secret``, as GitHub signs its
    webhooks, so that a receiver checks it with its own copy of the secret."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _json_body(response: requests.Response) -> Any:
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not response.content or not media_type.endswith("json"):
        return None
    try:
        return response.json()
    except ValueError:
        return None


def post(
    session: requests.Session,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: tuple[float, float],
) -> PostResult:
    """POST ``body`` to ``url`` and say what came of it (see the module docstring).

    Parameters
    ----------
    session
        Carries the receiver's TLS settings and credentials.
    headers
        Content-Type, the idempotency key, a signature...
    timeout
        (connect, read) seconds.
    """
    try:
        response = session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        )
    except requests.Timeout as exc:
        return PostResult(transient(f"timed out: {type(exc).__name__}"), None)
    except requests.RequestException as exc:
        return PostResult(transient(f"no connection: {printable(str(exc))}"), None)
    status = response.status_code
    if 200 <= status < 300:
        stored = StoreResult(Outcome.STORED, None, f"HTTP {status}")
        return PostResult(stored, status, _json_body(response), response.headers.get("Location"))
    return PostResult(classify_http(response), status, _json_body(response))
