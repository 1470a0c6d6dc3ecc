"""Timestamps read back from SQL aggregates, made timezone-aware UTC.

Columns typed ``UTCDateTime`` come back aware; but an aggregate over them (``MIN``,
``COALESCE``) loses the column type, and SQLite then returns ISO text, naive.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime | str) -> datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC already).

    Raises
    ------
    ValueError
        When a text value is not an ISO 8601 timestamp.
    """
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
