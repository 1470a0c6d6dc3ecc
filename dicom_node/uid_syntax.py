"""The DICOM UID syntax (PS3.5 9.1), checked without pydicom's warning on a bad value."""

from __future__ import annotations

from pydicom.uid import RE_VALID_UID

MAX_UID_LENGTH = 64


def is_uid(value: str) -> bool:
    """Digits and dots, no empty component, no leading zero in one, at most 64 characters.

    ``pydicom.uid.UID(value).is_valid`` says the same but warns about the value as it
    builds the UID, which for a hostile value means a log line per received instance.
    """
    return len(value) <= MAX_UID_LENGTH and RE_VALID_UID.fullmatch(value) is not None
