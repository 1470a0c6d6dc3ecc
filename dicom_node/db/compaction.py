"""Giving the space of deleted rows back: SQLite checkpointed and vacuumed incrementally.

SQLite keeps freed pages in the file, and its write-ahead log grows until a checkpoint
copies it back; after retention deletes rows, :func:`compact` truncates the log and
frees up to :data:`VACUUM_PAGES` pages per call (``PRAGMA incremental_vacuum``, which
works on a database created with ``auto_vacuum = INCREMENTAL``, as
`dicom_node.db.sessions` creates every new one). Small steps: the listener's writes
wait for each at most briefly. PostgreSQL's autovacuum reclaims dead rows on its own.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import cast

from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

VACUUM_PAGES = 10_000  # 40 MB of 4 KiB pages per call


def compact(sessions: sessionmaker[Session]) -> None:
    """Checkpoint and incrementally vacuum a SQLite database; nothing on PostgreSQL.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    with sessions() as session:
        engine = session.get_bind().engine
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        # The pragma frees one page per step; sqlite3's executescript steps it to the end
        # (a plain execute stops after the first page).
        sqlite = cast(sqlite3.Connection, raw.driver_connection)
        sqlite.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        busy, log_pages, copied = sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    logger.debug(
        "database compacted", extra={"busy": busy, "wal_pages": log_pages, "copied": copied}
    )
