"""Structured logging: one line per event, ``key=value`` fields after the message.

Library modules only call ``logger.info("event", extra={"study_uid": ...})``; the CLI
entry point installs this formatter, so that every event line carries its ids. Values
from the network (AE titles, UIDs, names, error texts) are escaped
(:mod:`dicom_node.log_safety`), so that none can start a line of its own.
"""

from __future__ import annotations

import logging
import sys

from dicom_node.log_safety import PersonNameWarningFilter, escape_control

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
# Continuation lines of a traceback start with this, never with a timestamp.
_CONTINUATION = "\n  | "


class KeyValueFormatter(logging.Formatter):
    """Render a record as ``time level logger message key=value ...``.

    The message and every field are escaped; a traceback follows on lines that start
    with ``"  | "``, so that only the event's own first line starts like a log line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The standard line, then the record's extra fields as escaped ``key=value`` pairs."""
        record.message = escape_control(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if fields:
            line += " " + " ".join(f"{k}={_quote(v)}" for k, v in sorted(fields.items()))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        details = [record.exc_text or "", self.formatStack(record.stack_info or "")]
        for text in filter(None, details):
            line += "".join(_CONTINUATION + escape_control(part) for part in text.splitlines())
        return line


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "='):
        return escape_control(text)
    return '"' + escape_control(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class CurrentStderr:
    """``sys.stderr`` as it is when a line is written, not as it was when logging was
    configured (as :data:`logging.lastResort` does).

    A command run in-process (tests, an embedding program) may see its ``sys.stderr``
    replaced and the old stream closed while the node's threads still log (the scheduler's
    job runs, the listener stopping); bound to the old stream, each such line would be a
    "Logging error" instead of a log line.
    """

    def write(self, text: str) -> int:
        """Write ``text`` to the current ``sys.stderr``."""
        return sys.stderr.write(text)

    def flush(self) -> None:
        """Flush the current ``sys.stderr``."""
        sys.stderr.flush()


def configure_logging(level: str = "INFO") -> None:
    """Send structured lines to stderr; called once by the CLI, never by library code."""
    handler = logging.StreamHandler(CurrentStderr())
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
    warnings_logger = logging.getLogger("py.warnings")
    if not any(isinstance(f, PersonNameWarningFilter) for f in warnings_logger.filters):
        warnings_logger.addFilter(PersonNameWarningFilter())
