"""Transient vs permanent delivery failures, from typed kinds, and the retries they lead to."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dicom_node.config import DeliverySection
from dicom_node.db.schema import WorkState, utcnow
from dicom_node.net.scu import FileStatus
from dicom_node.net.store_outcome import FailureKind, Outcome, classify_status
from dicom_node.work.delivery_queue import NextTry, backoff_seconds, next_try

SETTINGS = DeliverySection(max_attempts=5, backoff_initial_seconds=10, backoff_max_seconds=60)


@pytest.mark.parametrize(
    ("status", "outcome", "meaning"),
    [
        (0x0000, Outcome.STORED, "Success"),
        (0xB000, Outcome.STORED, "Coercion of Data Elements"),
        (0xB007, Outcome.STORED, "Data Set Does Not Match SOP Class"),
        (0xA700, Outcome.TRANSIENT, "Refused: Out of Resources"),
        (0xA7FF, Outcome.TRANSIENT, "Refused: Out of Resources"),
        (0x0213, Outcome.TRANSIENT, "Resource Limitation"),
        (0xA900, Outcome.PERMANENT, "Data Set Does Not Match SOP Class"),
        (0xC000, Outcome.PERMANENT, "Cannot Understand"),
        (0xCFFF, Outcome.PERMANENT, "Cannot Understand"),
        (0x0122, Outcome.PERMANENT, "Refused: SOP Class Not Supported"),
        (0x0124, Outcome.PERMANENT, "Refused: Not Authorised"),
        (0x0110, Outcome.PERMANENT, "Processing Failure"),
    ],
)
def test_status_classification(status: int, outcome: Outcome, meaning: str) -> None:
    result = classify_status(status)
    assert (result.outcome, result.meaning) == (outcome, meaning)


def test_error_text_carries_status_and_meaning() -> None:
    assert classify_status(0xA900).error == "permanent: 0xA900 Data Set Does Not Match SOP Class"
    assert classify_status(0x0000).error is None


@pytest.mark.parametrize(
    ("status", "reason", "failure", "outcome", "code"),
    [
        (None, "refused or timed out", FailureKind.NETWORK, Outcome.TRANSIENT, None),
        (None, "association lost", FailureKind.NETWORK, Outcome.TRANSIENT, None),
        (None, "no C-STORE response", FailureKind.NETWORK, Outcome.TRANSIENT, None),
        # The kind decides, never the words: the same text under another kind.
        (None, "peer accepted no context", FailureKind.NETWORK, Outcome.TRANSIENT, None),
        (None, "any words", FailureKind.NO_CONTEXT, Outcome.PERMANENT, 0x0122),
        (None, "not a DICOM file: [Errno 2]", FailureKind.NOT_DICOM, Outcome.PERMANENT, None),
        (None, "gone", FailureKind.NOT_DICOM, Outcome.PERMANENT, None),
        # A status decides over any kind.
        (0xA701, "", FailureKind.NETWORK, Outcome.TRANSIENT, 0xA701),
        (0xC210, "", FailureKind.NETWORK, Outcome.PERMANENT, 0xC210),
        (0x0107, "", FailureKind.NO_CONTEXT, Outcome.STORED, 0x0107),
    ],
)
def test_file_outcomes_from_scu(
    status: int | None, reason: str, failure: FailureKind, outcome: Outcome, code: int | None
) -> None:
    result = FileStatus(Path("x.dcm"), "1.2", status, reason, failure).result
    assert (result.outcome, result.status) == (outcome, code)
    assert FileStatus(Path("x.dcm"), "1.2", status, reason, failure).ok == (
        outcome is Outcome.STORED
    )


def test_no_context_keeps_the_reason_in_the_meaning() -> None:
    no_context = FileStatus(
        Path("x"), "1", None, "peer accepted no context for 1.2.3", FailureKind.NO_CONTEXT
    )
    assert no_context.result.error == (
        "permanent: 0x0122 Refused: SOP Class Not Supported (peer accepted no context for 1.2.3)"
    )


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, SETTINGS) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_transient_failures_retry_until_max_attempts() -> None:
    now = utcnow()
    refused = FileStatus(Path("x"), "1", None, "refused").result
    after = next_try(refused, 1, 0, SETTINGS, now)
    assert after == NextTry(WorkState.QUEUED, now + timedelta(seconds=10), 0)
    # A transient failure after a permanent one is not held against it.
    assert next_try(refused, 4, 1, SETTINGS, now).state == WorkState.QUEUED
    assert next_try(refused, 5, 0, SETTINGS, now) == NextTry(WorkState.FAILED, None, 0)


def test_permanent_failure_is_retried_once_then_failed() -> None:
    now = utcnow()
    bad = classify_status(0xA900)
    after = next_try(bad, 1, 0, SETTINGS, now)
    assert after.state == WorkState.QUEUED and after.retry_at is not None
    assert after.permanent_failures == 1
    assert next_try(bad, 2, 1, SETTINGS, now) == NextTry(WorkState.FAILED, None, 2)
    # A permanent failure without a status (unreadable file) also gets one retry only.
    unreadable = FileStatus(Path("x"), None, None, "gone", FailureKind.NOT_DICOM).result
    assert next_try(unreadable, 2, 1, SETTINGS, now).state == WorkState.FAILED
    # After a transient failure the first permanent one still gets its one retry,
    assert next_try(bad, 2, 0, SETTINGS, now).state == WorkState.QUEUED
    # and a transient failure between two permanent ones does not buy another.
    assert next_try(bad, 3, 1, SETTINGS, now).state == WorkState.FAILED
