"""Transient vs permanent delivery failures, and the retry schedule they lead to."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dicom_node.config import DeliverySection
from dicom_node.delivery import classify_file
from dicom_node.schema import WorkState, utcnow
from dicom_node.scu import FileStatus
from dicom_node.store_outcome import Outcome, backoff_seconds, classify_status, next_state

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
    ("status", "reason", "outcome", "code"),
    [
        (None, "refused or timed out", Outcome.TRANSIENT, None),
        (None, "association lost", Outcome.TRANSIENT, None),
        (None, "no C-STORE response", Outcome.TRANSIENT, None),
        (
            None,
            "peer accepted no context for 1.2.3 in 1.2.840.10008.1.2.1",
            Outcome.PERMANENT,
            0x0122,
        ),
        (None, "not a DICOM file: [Errno 2] No such file", Outcome.PERMANENT, None),
        (0xA701, "", Outcome.TRANSIENT, 0xA701),
        (0xC210, "", Outcome.PERMANENT, 0xC210),
    ],
)
def test_file_outcomes_from_scu(
    status: int | None, reason: str, outcome: Outcome, code: int | None
) -> None:
    result = classify_file(FileStatus(Path("x.dcm"), "1.2", status, reason), "1.2.3")
    assert (result.outcome, result.status) == (outcome, code)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, SETTINGS) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_transient_failures_retry_until_max_attempts() -> None:
    now = utcnow()
    refused = classify_file(FileStatus(Path("x"), "1", None, "refused"), "1.2")
    bad_before = classify_status(0xA900).error
    state, at = next_state(refused, 1, None, SETTINGS, now)
    assert state == WorkState.QUEUED and at == now + timedelta(seconds=10)
    # A transient failure after a permanent one is not held against it.
    state, _ = next_state(refused, 4, bad_before, SETTINGS, now)
    assert state == WorkState.QUEUED
    assert next_state(refused, 5, None, SETTINGS, now) == (WorkState.FAILED, None)


def test_permanent_failure_is_retried_once_then_failed() -> None:
    now = utcnow()
    bad = classify_status(0xA900)
    state, at = next_state(bad, 1, None, SETTINGS, now)
    assert state == WorkState.QUEUED and at is not None
    assert next_state(bad, 2, bad.error, SETTINGS, now) == (WorkState.FAILED, None)
    # A permanent failure without a status (unreadable file) also gets one retry only.
    unreadable = classify_file(FileStatus(Path("x"), None, None, "not a DICOM file: gone"), "1")
    assert next_state(unreadable, 2, unreadable.error, SETTINGS, now) == (WorkState.FAILED, None)
    # After a transient failure the first permanent one still gets its one retry.
    state, _ = next_state(bad, 2, classify_status(0xA700).error, SETTINGS, now)
    assert state == WorkState.QUEUED
