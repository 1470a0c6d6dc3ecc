"""The audit trail: what happened to each study, as append-only JSON lines.

Events in the spirit of IHE ATNA / RFC 3881 (who, what, when, on which study), written
by every stage through :func:`audit`: associations accepted and refused, instances
received (counted per study and association, never one line per instance), studies
completed, jobs run, result objects created, deliveries, commitments and notifications,
requeues by hand, the configuration at start-up, retention's removal of a study's rows, and
what a backfill fetched from an archive (per run and per study).

The library only calls :func:`audit`; a process that keeps a trail installs the file
handler with :func:`open_audit_log` (the service at start-up, the CLI commands that
change state). Lines go to the audit files only, never to the diagnostic log, because
they may carry patient identifiers: fields named in :data:`PATIENT_FIELDS` are written
only with ``[audit] include_patient_ids = true``. Files rotate by size
(:class:`logging.handlers.RotatingFileHandler`); each process role writes its own file
(``listener.jsonl``, ``worker.jsonl``, ...) so that rotation never races another process.

:func:`study_history` reads a study's life back from the files alone.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from dicom_node.config import AuditSection

_LOGGER = logging.getLogger("dicom_node.audit")
_LOGGER.propagate = False  # patient identifiers never reach the diagnostic log
_LOGGER.setLevel(logging.INFO)

PATIENT_FIELDS = frozenset({"patient_id", "patient_name"})
# Fields that tie an event without a study UID (a delivery, a requeue) to its study.
_LINKS = ("job_id", "result_sop_uid")
# Lists of them, in lines of trails written before ``retry`` wrote a line per job.
_ID_LISTS = {"job_ids": "job_id", "result_sop_uids": "result_sop_uid"}


class AuditEvent(StrEnum):
    """The kinds of audit line."""

    NODE_STARTED = "node-started"
    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REJECTED = "association-rejected"
    INSTANCES_RECEIVED = "instances-received"
    STUDY_COMPLETED = "study-completed"
    JOB_RUN = "job-run"
    CHAIN_STEP = "chain-step"  # a later step of a chain queued, or marked not run
    RESULT_CREATED = "result-created"
    DELIVERY = "delivery"
    COMMITMENT = "commitment"
    NOTIFICATION = "notification"
    REQUEUED = "requeued"
    STUDY_REMOVED = "study-removed"
    BACKFILL_RUN = "backfill-run"
    BACKFILL_RETRIEVED = "backfill-retrieved"


def audit(event: AuditEvent, **fields: Any) -> None:
    """Write one audit line (a no-op in a process without an audit file).

    Parameters
    ----------
    event
        What happened.
    **fields
        Its facts: ``study_uid``, ``job_id``, ``result_sop_uid``, counts, outcomes; JSON
        values (anything else is written as its ``str``).
    """
    _LOGGER.info(event.value, extra={"audit_fields": fields})


class AuditFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``event``, ``host``, ``pid``, then the fields.

    Parameters
    ----------
    include_patient_ids
        Keep the fields of :data:`PATIENT_FIELDS`; dropped otherwise.
    """

    def __init__(self, include_patient_ids: bool) -> None:
        super().__init__()
        self.include_patient_ids = include_patient_ids
        self.host = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line (no newline inside: JSON escapes control characters)."""
        fields: dict[str, Any] = getattr(record, "audit_fields", {})
        if not self.include_patient_ids:
            fields = {k: v for k, v in fields.items() if k not in PATIENT_FIELDS}
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "event": record.getMessage(),
            "host": self.host,
            "pid": record.process,
            **fields,
        }
        return json.dumps(line, default=str, sort_keys=False)


def audit_file(settings: AuditSection, role: str) -> Path:
    """The file a process of ``role`` appends to."""
    return settings.dir / f"{role}.jsonl"


def open_audit_log(settings: AuditSection, role: str) -> logging.Handler | None:
    """Start appending audit lines to ``role``'s file; None when the trail is disabled.

    Give the handler to :func:`close_audit_log` when the process stops.

    Raises
    ------
    OSError
        When the audit folder cannot be created or the file opened.
    """
    if not settings.enabled:
        return None
    path = audit_file(settings, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(
        path,
        maxBytes=settings.max_file_mb * 1024 * 1024,
        backupCount=settings.keep_files,
        encoding="utf-8",
    )
    handler.setFormatter(AuditFormatter(settings.include_patient_ids))
    _LOGGER.addHandler(handler)
    return handler


def close_audit_log(handler: logging.Handler | None) -> None:
    """Stop writing through ``handler`` (from :func:`open_audit_log`) and close its file."""
    if handler is not None:
        _LOGGER.removeHandler(handler)
        handler.close()


def _lines(folder: Path) -> Iterator[dict[str, Any]]:
    """The audit lines of every file in ``folder``, file by file (not in time order);
    a line that is not JSON (a file cut by a crash mid-write) is skipped."""
    for path in sorted(folder.glob("*.jsonl*")):
        with path.open(encoding="utf-8") as handle:
            for text in handle:
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(line, dict) and "time" in line:
                    yield line


def _in_time_order(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(lines, key=lambda line: str(line["time"]))


def read_audit(folder: Path) -> list[dict[str, Any]]:
    """Every audit line in ``folder`` (all roles, rotated files included), oldest first.

    Raises
    ------
    OSError
        When a file cannot be read.
    """
    return _in_time_order(_lines(folder))


def _links(line: dict[str, Any]) -> set[tuple[str, str]]:
    found = {(key, str(line[key])) for key in _LINKS if key in line}
    for key, link in _ID_LISTS.items():
        found |= {(link, str(value)) for value in line.get(key, [])}
    return found


def study_history(
    folder: Path, study_uid: str, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The lines about ``study_uid``, oldest first: those naming it, and those naming one
    of its jobs or result objects (deliveries, commitments, requeues), from ``since`` on.

    Reads the files twice (first the study's own jobs and results, then every line that
    names one), so that memory holds the study's lines only, whatever the trail's size.

    Parameters
    ----------
    folder
        The audit folder (``audit.dir``).
    study_uid
        The Study Instance UID.
    since
        Leave out lines before this time (aware).

    Raises
    ------
    OSError
        When a file cannot be read.
    """
    known: set[tuple[str, str]] = set()
    for line in _lines(folder):
        if line.get("study_uid") == study_uid:
            known |= _links(line)
    history = (
        line
        for line in _lines(folder)
        if line.get("study_uid") == study_uid or (_links(line) & known)
    )
    if since is not None:
        history = (line for line in history if datetime.fromisoformat(line["time"]) >= since)
    return _in_time_order(history)
