"""Giving the space of deleted rows back: SQLite checkpointed and vacuumed incrementally.

SQLite keeps freed pages in the file, and its write-ahead log grows until a checkpoint
copies it back; after retention deletes rows, :func:`compact` truncates the log and
frees up to :data:`VACUUM_PAGES` pages per call (``PRAGMA incremental_vacuum``, which
works on a database created with ``auto_vacuum = INCREMENTAL``, as
`dicom_node.db.sessions` creates every new one). Small steps: the listener's writes
wait for each at most briefly. A database created before the node set that mode keeps
``auto_vacuum = NONE``, which only a full ``VACUUM`` can change: the first
:func:`compact` on such a database runs it once, logged, and every later call is
incremental. PostgreSQL's autovacuum reclaims dead rows on its own.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import cast

from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

VACUUM_PAGES = 10_000  # 40 MB of 4 KiB pages per call
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def _size(sqlite: sqlite3.Connection) -> int:
    (pages,) = sqlite.execute("PRAGMA page_count").fetchone()
    (page_size,) = sqlite.execute("PRAGMA page_size").fetchone()
    return int(pages * page_size)


def _make_incremental(sqlite: sqlite3.Connection, path: str) -> None:
    """Switch a database with ``auto_vacuum = NONE`` to INCREMENTAL: the one full
    ``VACUUM`` that takes (the file is rewritten; writers wait meanwhile), logged."""
    (mode,) = sqlite.execute("PRAGMA auto_vacuum").fetchone()
    if mode == INCREMENTAL:
        return
    before, start = _size(sqlite), time.monotonic()
    sqlite.execute("PRAGMA auto_vacuum=INCREMENTAL")
    sqlite.execute("VACUUM")
    logger.info(
        "database switched to incremental vacuum (one full VACUUM)",
        extra={
            "database": path,
            "bytes_before": before,
            "bytes_after": _size(sqlite),
            "seconds": round(time.monotonic() - start, 2),
        },
    )


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
        _make_incremental(sqlite, str(engine.url.database))
        sqlite.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        busy, log_pages, copied = sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    logger.debug(
        "database compacted", extra={"busy": busy, "wal_pages": log_pages, "copied": copied}
    )
