"""Errors raised while turning a prediction into result objects.

`ResultBuildError` is the root, so that the node can tell a result it cannot build
(the job fails with the reason) from a bug. Each subclass carries the offending value.
"""

from __future__ import annotations

HIGHDICOM_REJECTIONS = (ValueError, RuntimeError, KeyError, AttributeError, TypeError)
"""What highdicom raises for sources it cannot build on (checked, not crashed on)."""


class ResultBuildError(Exception):
    """A result object cannot be built from this prediction and these sources."""


class SourceMismatchError(ResultBuildError):
    """The prediction refers to a source frame that is not among the source datasets.

    Parameters
    ----------
    sop_instance_uid: str
        The SOP Instance UID the prediction names.
    frame_number: int
        The 1-based frame number the prediction names.
    reason: str
        What does not match.
    """

    def __init__(self, sop_instance_uid: str, frame_number: int, reason: str) -> None:
        self.sop_instance_uid = sop_instance_uid
        self.frame_number = frame_number
        super().__init__(f"source frame {sop_instance_uid} #{frame_number}: {reason}")


class UnsupportedSourceError(ResultBuildError):
    """The sources cannot carry this object (e.g. a SEG without a Frame of Reference).

    The SR still goes out and says why; this error names the object kind and reason.

    Parameters
    ----------
    kind: str
        The object that could not be built (``"SEG"``, ``"Parametric Map"``).
    reason: str
        Why the sources cannot carry it.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind} not written: {reason}")
