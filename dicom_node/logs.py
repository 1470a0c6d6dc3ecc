"""Structured logging: one line per event, ``key=value`` fields after the message.

Library modules only call ``logger.info("event", extra={"study_uid": ...})``; the CLI
entry point installs this formatter, so that every event line carries its ids.
"""

from __future__ import annotations

import logging
import sys

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class KeyValueFormatter(logging.Formatter):
    """Render a record as ``time level logger message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if fields:
            line += " " + " ".join(f"{k}={_quote(v)}" for k, v in sorted(fields.items()))
        return line


def _quote(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def configure_logging(level: str = "INFO") -> None:
    """Send structured lines to stderr; called once by the CLI, never by library code."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU and highdicom every copied module at INFO; keep their
    # chatter for debugging only, so that an INFO log is one line per node event.
    for chatty in ("pynetdicom", "highdicom", "dicomweb_client"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))
    # dicomweb-client's retry helper logs every failed request with a traceback, even
    # with its retries off; delivery logs each outcome once.
    logging.getLogger("retrying").setLevel(max(root.level, logging.ERROR))
