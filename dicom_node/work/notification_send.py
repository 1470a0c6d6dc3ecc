"""Sending one notification document to its receiver, the way its entry's kind says.

- Webhook: the document as compact JSON (sorted keys: the same bytes on every try) in
  one POST, with ``Idempotency-Key`` and, when a secret is set, the body's HMAC-SHA256
  in ``signature_header`` (``sha256=<hex>``).
- FHIR: a transaction Bundle POSTed to the base URL; or, with ``post = "individual"``,
  each Observation POSTed to ``<base>/Observation`` and then the DiagnosticReport,
  referencing the ids the server gave, to ``<base>/DiagnosticReport``, each with an
  ``If-None-Exist`` header so that a retry after a lost answer creates nothing twice.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import requests

from dicom_node.config import FhirNotification, NodeConfig, NotificationBase, WebhookNotification
from dicom_node.net.dicomweb_auth import DicomwebError, read_secret
from dicom_node.net.http_post import PostResult, hmac_signature, post
from dicom_node.net.store_outcome import Outcome, StoreResult, transient
from dicom_node.work.fhir_report import (
    diagnostic_report,
    if_none_exist,
    observations,
    transaction_bundle,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
FHIR_JSON = "application/fhir+json"
# ".../Observation/123" or ".../Observation/123/_history/1" in a Location header.
_LOCATION_ID = re.compile(r"(?:^|/)Observation/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


class NotificationError(Exception):
    """A notification could not be made (its secret is missing); ``result`` says how
    the try ends."""

    def __init__(self, result: StoreResult) -> None:
        self.result = result
        super().__init__(result.meaning)


def _secret(entry: WebhookNotification) -> str | None:
    """The HMAC secret from its file or environment variable; None when none is set.

    Raises
    ------
    NotificationError
        When the file cannot be read or the variable is unset: transient, so that the
        notification goes once an administrator fixes it.
    """
    if entry.secret_file is not None:
        try:
            return read_secret(entry.secret_file, entry.name, "secret_file")
        except DicomwebError as exc:
            raise NotificationError(transient(exc.reason)) from None
    if entry.secret_env is not None:
        value = os.environ.get(entry.secret_env)
        if not value:
            reason = f"secret_env: environment variable {entry.secret_env} is not set"
            raise NotificationError(transient(reason))
        return value
    return None


def _timeout(entry: NotificationBase) -> tuple[float, float]:
    return entry.connect_timeout_seconds, entry.read_timeout_seconds


def webhook_body(document: dict[str, Any]) -> bytes:
    """The bytes a webhook receives (and its signature covers)."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")


def send_webhook(
    entry: WebhookNotification, document: dict[str, Any], session: requests.Session
) -> PostResult:
    """POST the document to the webhook.

    Raises
    ------
    NotificationError
        When its secret cannot be read.
    """
    body = webhook_body(document)
    headers = {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: str(document["idempotency_key"]),
    }
    secret = _secret(entry)
    if secret is not None:
        headers[entry.signature_header] = hmac_signature(secret, body)
    return post(session, entry.url, body, headers, _timeout(entry))


def _observation_reference(answer: PostResult) -> str | None:
    """``Observation/<id>`` from a create's answer: its body's id, else its Location."""
    body = answer.body
    if isinstance(body, dict) and body.get("resourceType") == "Observation" and body.get("id"):
        return f"Observation/{body['id']}"
    match = _LOCATION_ID.search(answer.location or "")
    return f"Observation/{match.group(1)}" if match else None


def send_fhir(
    entry: FhirNotification, document: dict[str, Any], session: requests.Session
) -> PostResult:
    """Create the report and its Observations on the FHIR server (module docstring)."""
    key = str(document["idempotency_key"])
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, IDEMPOTENCY_HEADER: key}
    timeout = _timeout(entry)
    if entry.post == "transaction":
        body = transaction_bundle(document).model_dump_json(exclude_none=True).encode()
        return post(session, entry.url, body, headers, timeout)
    references = []
    for observation in observations(document):
        body = observation.model_dump_json(exclude_none=True).encode()
        conditional = {**headers, "If-None-Exist": if_none_exist(observation)}
        answer = post(session, f"{entry.url}/Observation", body, conditional, timeout)
        if answer.result.outcome is not Outcome.STORED:
            return answer
        reference = _observation_reference(answer)
        if reference is None:
            reason = "the FHIR server's answer to a create names no Observation id"
            return PostResult(StoreResult(Outcome.PERMANENT, None, reason), answer.http_status)
        references.append(reference)
    report = diagnostic_report(document, references)
    body = report.model_dump_json(exclude_none=True).encode()
    conditional = {**headers, "If-None-Exist": if_none_exist(report)}
    return post(session, f"{entry.url}/DiagnosticReport", body, conditional, timeout)


def send_notification(
    entry: NotificationBase, document: dict[str, Any], session: requests.Session
) -> PostResult:
    """Send ``document`` as ``entry``'s kind says.

    Raises
    ------
    NotificationError
        When the notification cannot be made (a webhook's secret missing).
    """
    if isinstance(entry, WebhookNotification):
        return send_webhook(entry, document, session)
    if isinstance(entry, FhirNotification):
        return send_fhir(entry, document, session)
    raise TypeError(f"not a notification kind: {type(entry).__name__}")


def notification_file_problems(config: NodeConfig) -> list[tuple[str, str]]:
    """``(key path, message)`` for a webhook secret file that does not hold one line of
    text and a CA file that is not there: what every send would fail on, for
    ``check-config`` to say first."""
    problems = []
    for index, entry in enumerate(config.notifications):
        key = f"notifications[{index}]"
        if isinstance(entry, WebhookNotification) and entry.secret_file is not None:
            try:
                read_secret(entry.secret_file, entry.name, "secret_file")
            except DicomwebError as exc:
                problems.append((f"{key}.secret_file", exc.reason))
        if entry.ca_file is not None and not entry.ca_file.is_file():
            problems.append((f"{key}.ca_file", f"no such file {str(entry.ca_file)!r}"))
    return problems
