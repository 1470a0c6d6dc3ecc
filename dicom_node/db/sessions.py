"""Connecting to the database: SQLite (WAL) by default, PostgreSQL for scale-out.

The same code runs on both; only the engine options differ. SQLite gets WAL (readers
never block the writer), ``synchronous=FULL`` (a committed row survives power loss,
which the listener promises before it answers Success) and a busy timeout so that
threads of one process queue for the write lock instead of failing.

The schema is created on first use. Later versions of the node only ever add columns
that have a server default, and `add_missing_columns` adds them to an existing
database at start-up, so a database written by an earlier version keeps working.
A change that is not additive (a renamed, dropped or retyped column) would need a
migration tool; none has been needed so far.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateColumn

from dicom_node.db.schema import Base
from dicom_node.errors import DicomNodeError

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``, with the schema created if it is not there yet.

    Raises
    ------
    sqlalchemy.exc.ArgumentError
        When ``url`` is not a database URL SQLAlchemy knows.
    """
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    Base.metadata.create_all(engine)
    add_missing_columns(engine)
    return engine


class SchemaError(DicomNodeError):
    """The database's tables cannot be brought up to this version's schema."""


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the columns this version has and the database lacks; their ``table.column`` names.

    Raises
    ------
    SchemaError
        When a missing column has no server default (existing rows could not get a
        value), naming the column.
    sqlalchemy.exc.SQLAlchemyError
        When the database refuses the change for another reason.
    """
    added = []
    for table in Base.metadata.sorted_tables:
        present = _columns(engine, table.name)
        for column in table.columns:
            if column.name in present:
                continue
            name = f"{table.name}.{column.name}"
            if not column.nullable and column.server_default is None:
                raise SchemaError(f"cannot add {name} to an existing database: it has no default")
            ddl = CreateColumn(column).compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
            except SQLAlchemyError:
                if column.name not in _columns(engine, table.name):
                    raise
                continue  # another process starting at the same time added it
            logger.info("database column added", extra={"column": name})
            added.append(name)
    return added


def _columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded rows usable after commit (no lazy reload per attribute)."""
    return sessionmaker(engine, expire_on_commit=False)
