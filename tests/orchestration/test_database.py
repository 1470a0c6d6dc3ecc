"""A database written by an earlier version: the columns added since are added at start-up."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dicom_node.db.sessions import SchemaError, add_missing_columns, create_db_engine


def test_an_older_database_gets_the_new_columns_and_keeps_its_rows(own_database_url: str) -> None:
    engine = create_db_engine(own_database_url)
    with engine.begin() as connection:  # as the version before permanent_failures wrote it
        connection.execute(text("ALTER TABLE deliveries DROP COLUMN permanent_failures"))
        connection.execute(
            text(
                "INSERT INTO studies (id, study_instance_uid, state, generation, instance_count,"
                " first_received_at, last_received_at) VALUES"
                " (1, '1.2.3', 'routed', 0, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, study_id, generation, route_name, model_name, series_uids,"
                " destinations, state, attempts, not_before, created_at, timings) VALUES"
                " (1, 1, 0, 'r', 'm', '[]', '[]', 'done', 1, CURRENT_TIMESTAMP,"
                " CURRENT_TIMESTAMP, '{}')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO deliveries (id, job_id, peer_name, sop_instance_uid, sop_class_uid,"
                " path, state, attempts, next_attempt_at, error, created_at, updated_at) VALUES"
                " (1, 1, 'pacs', '1.2.3.4', '1.2.5', 'x.dcm', 'queued', 1, CURRENT_TIMESTAMP,"
                " 'permanent: 0xA900 Data Set Does Not Match SOP Class', CURRENT_TIMESTAMP,"
                " CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    engine = create_db_engine(own_database_url)  # the new version starts on it
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, attempts, permanent_failures FROM deliveries")
            ).all()
        assert [tuple(row) for row in rows] == [(1, 1, 0)]
        assert add_missing_columns(engine) == []  # nothing left to add
    finally:
        engine.dispose()


def test_a_missing_column_without_a_default_is_an_error_naming_it(own_database_url: str) -> None:
    engine = create_db_engine(own_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE deliveries DROP COLUMN path"))
        with pytest.raises(SchemaError, match=r"cannot add deliveries\.path .* no default"):
            add_missing_columns(engine)
    finally:
        engine.dispose()
