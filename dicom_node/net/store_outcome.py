"""What one C-STORE came to: stored, or failed transiently or permanently, with the meaning.

Stored: a Success or Warning status (0x0000; 0x0001, 0x0107, 0x0116, 0xB0xx): the
archive has the object.

Transient (worth retrying later): the association is refused, aborted or dropped, the
peer does not answer in time (no status: `FailureKind.NETWORK`), or it answers 0xA7xx
"Refused: Out of Resources" or 0x0213 "Resource Limitation". The object is fine; the
archive is not ready.

Permanent (retrying cannot help, except against a passing fault): a failure status for
the object itself: 0xA9xx "Data Set Does Not Match SOP Class", 0xCxxx "Cannot
Understand", 0x0122 "SOP Class Not Supported" (also when the peer accepts no
presentation context for it: `FailureKind.NO_CONTEXT`), 0x0124 "Not Authorised", every
other failure status, and a file that is not DICOM (`FailureKind.NOT_DICOM`).

How often each is retried is the delivery queue's policy
(`dicom_node.work.delivery_queue.next_try`); this module only tells them apart, from typed
values, never from message text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

SOP_CLASS_NOT_SUPPORTED = 0x0122
RESOURCE_LIMITATION = 0x0213


class Outcome(enum.StrEnum):
    """Whether the peer has the object, and if not, whether trying again may help."""

    STORED = "stored"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class FailureKind(enum.StrEnum):
    """Why a C-STORE got no status from the peer."""

    NETWORK = "network"  # refused, rejected, aborted, dropped, timed out: transient
    NO_CONTEXT = "no_context"  # no presentation context accepted for its SOP class: permanent
    NOT_DICOM = "not_dicom"  # the file cannot be read as DICOM (removed, corrupt): permanent


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


def unanswered(kind: FailureKind, reason: str) -> StoreResult:
    """The outcome of a C-STORE that got no status, from why it got none.

    Parameters
    ----------
    kind
        Why no status came back.
    reason
        What happened, in words (kept on the delivery row with the outcome).
    """
    if kind is FailureKind.NO_CONTEXT:
        meaning = f"{status_meaning(SOP_CLASS_NOT_SUPPORTED)} ({reason})"
        return StoreResult(Outcome.PERMANENT, SOP_CLASS_NOT_SUPPORTED, meaning)
    if kind is FailureKind.NOT_DICOM:
        return StoreResult(Outcome.PERMANENT, None, reason)
    return transient(reason)
