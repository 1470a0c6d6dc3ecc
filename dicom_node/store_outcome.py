"""Whether a failed C-STORE is worth retrying: transient vs permanent, with the meaning.

Transient (retried with exponential backoff until ``delivery.max_attempts``): the
association is refused, aborted or dropped, the peer does not answer in time, or it
answers 0xA7xx "Refused: Out of Resources" (or 0x0213 "Resource Limitation"). The
object is fine; the archive is not ready.

Permanent (retried once, in case the archive had a passing fault, then failed and never
retried in a loop): a failure status for the object itself: 0xA9xx "Data Set Does Not
Match SOP Class", 0xCxxx "Cannot Understand", 0x0122 "SOP Class Not Supported" (also
used when the peer accepts no presentation context for it), 0x0124 "Not Authorised",
and every other failure status.

Success and Warning statuses (0xB000, 0xB006, 0xB007, 0x0001) mean the archive stored it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicom_node.config import DeliverySection
from dicom_node.schema import WorkState

SOP_CLASS_NOT_SUPPORTED = 0x0122
RESOURCE_LIMITATION = 0x0213


class Outcome(enum.StrEnum):
    STORED = "stored"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class StoreResult:
    """What one C-STORE or STOW-RS attempt came to: the outcome, the DIMSE status (a
    STOW-RS response's FailureReason is one; None when the peer gave none) and a sentence
    saying what happened."""

    outcome: Outcome
    status: int | None
    meaning: str
    # A DICOMweb peer's Retry-After (HTTP 429, 503): the next try waits at least this long.
    retry_after_seconds: float | None = None

    @property
    def error(self) -> str | None:
        """The text kept on the delivery row (None when stored)."""
        if self.outcome is Outcome.STORED:
            return None
        code = "" if self.status is None else f"0x{self.status:04X} "
        return f"{self.outcome}: {code}{self.meaning}"


def status_meaning(status: int) -> str:
    """The standard's name for a C-STORE status, or its category for unknown codes."""
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    if known is not None:
        return known[1] or known[0]
    return f"{code_to_category(status)} (status not defined for C-STORE)"


def classify_status(status: int) -> StoreResult:
    """Classify a C-STORE response status (see the module docstring)."""
    category = code_to_category(status)
    meaning = status_meaning(status)
    if category in {"Success", "Warning"}:
        return StoreResult(Outcome.STORED, status, meaning)
    if status >> 8 == 0xA7 or status == RESOURCE_LIMITATION:
        return StoreResult(Outcome.TRANSIENT, status, meaning)
    return StoreResult(Outcome.PERMANENT, status, meaning)


def transient(reason: str) -> StoreResult:
    """A network-level failure: no status from the peer (refused, dropped, timed out)."""
    return StoreResult(Outcome.TRANSIENT, None, reason)


def not_accepted(sop_class_uid: str) -> StoreResult:
    """The peer accepted no presentation context for this SOP class and transfer syntax."""
    return StoreResult(
        Outcome.PERMANENT,
        SOP_CLASS_NOT_SUPPORTED,
        f"Refused: SOP Class Not Supported (no presentation context accepted for {sop_class_uid})",
    )


def backoff_seconds(attempts: int, settings: DeliverySection) -> float:
    """Delay before the next try after ``attempts`` tries: doubling, capped."""
    delay = settings.backoff_initial_seconds * 2 ** max(0, attempts - 1)
    return float(min(delay, settings.backoff_max_seconds))


def next_state(
    result: StoreResult,
    attempts: int,
    previous_error: str | None,
    settings: DeliverySection,
    now: datetime,
) -> tuple[WorkState, datetime | None]:
    """The state after a failed attempt, and when to try again (None: never): after the
    backoff, or the peer's Retry-After when that is later.

    A permanent failure is retried once: if the previous attempt also failed
    permanently, the delivery fails now.
    """
    previously_permanent = (previous_error or "").startswith(f"{Outcome.PERMANENT}:")
    if attempts >= settings.max_attempts or (
        result.outcome is Outcome.PERMANENT and previously_permanent
    ):
        return WorkState.FAILED, None
    delay = max(backoff_seconds(attempts, settings), result.retry_after_seconds or 0.0)
    return WorkState.QUEUED, now + timedelta(seconds=delay)
