"""Spool files no row knows about: indexed when whole, removed otherwise.

The listener renames a received file into the spool before it commits the instance
row; when the database write then fails (or the process dies between the two), the
sender was not answered Success and sends again, but the file stays with no row. Such
a file older than ``retention.orphan_grace_seconds`` (so that a store in flight is never
touched) is read: a valid instance at the spool path of its own UIDs is indexed as if
just received (its study is completed and routed as usual); anything else is removed.
Each is logged. The listener role runs this at start-up and with every retention scan.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Instance, utcnow
from dicom_node.intake.catalog import ReceivedInstance, RecordOutcome, record_instance
from dicom_node.intake.headers import HeaderError, read_headers
from dicom_node.intake.spool import Spool

logger = logging.getLogger(__name__)

BATCH_FILES = 500


@dataclass(frozen=True)
class OrphanReport:
    """What one reconciliation did."""

    indexed: int
    removed: int


def _old_files(spool: Spool, grace_seconds: float) -> Iterator[Path]:
    """Spool files older than the grace period, listed lazily, folder by folder.

    Retention removes files, and the folders they leave empty, while this walks:
    ``os.walk`` skips a folder gone before it is listed (``Path.rglob`` raises).
    """
    cutoff = time.time() - grace_seconds
    for folder, _, names in os.walk(spool.instances_dir):
        for name in names:
            path = Path(folder, name)
            try:
                if name.endswith(".dcm") and path.stat().st_mtime <= cutoff:
                    yield path
            except FileNotFoundError:  # removed by retention meanwhile
                continue


def _unknown(sessions: sessionmaker[Session], paths: list[Path]) -> list[Path]:
    with sessions() as session:
        known = set(
            session.scalars(select(Instance.path).where(Instance.path.in_([str(p) for p in paths])))
        )
    return [path for path in paths if str(path) not in known]


def _index(sessions: sessionmaker[Session], spool: Spool, path: Path) -> str | None:
    """Index ``path``; None when done, else why it must go instead."""
    try:
        headers = read_headers(path)
        transfer_syntax = str(read_file_meta_info(path).TransferSyntaxUID)
    except HeaderError as exc:
        return exc.reason
    except (InvalidDicomError, AttributeError, OSError) as exc:
        return f"no readable file meta information: {exc}"
    expected = spool.path_for(
        headers.study_instance_uid, headers.series_instance_uid, headers.sop_instance_uid
    )
    if expected != path:
        return f"not at the spool path of its UIDs ({expected})"
    received = ReceivedInstance(
        headers=headers,
        transfer_syntax_uid=transfer_syntax,
        path=str(path),
        size_bytes=path.stat().st_size,
        calling_ae_title=None,
        received_at=utcnow(),
    )
    if record_instance(sessions, received, replace=False).outcome is RecordOutcome.KEPT:
        return "the instance is recorded at another path"
    return None


def reconcile_orphans(
    sessions: sessionmaker[Session], spool: Spool, grace_seconds: float
) -> OrphanReport:
    """Index or remove every spool file older than ``grace_seconds`` that no row names.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails; files handled before stay handled.
    """
    indexed = removed = 0
    files = _old_files(spool, grace_seconds)
    while True:
        batch = [path for _, path in zip(range(BATCH_FILES), files, strict=False)]
        if not batch:
            break
        for path in _unknown(sessions, batch):
            reason = _index(sessions, spool, path)
            if reason is None:
                indexed += 1
                logger.warning("orphan spool file indexed", extra={"path": str(path)})
            else:
                path.unlink(missing_ok=True)
                removed += 1
                logger.warning(
                    "orphan spool file removed", extra={"path": str(path), "reason": reason}
                )
    return OrphanReport(indexed, removed)
