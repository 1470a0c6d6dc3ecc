"""A chain's later-step rows in the database: one per job of the step before, renewed
(not duplicated) when that job runs again, and on a database made before chained
models a row that does not fit is logged, never fatal to the job that ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.db.schema import Job, WorkState, utcnow
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work.chain import advance_chain
from tests.orchestration.conftest import add_study, make_config

SERIES = ["1.2.3.1", "1.2.3.2"]


def chain(tmp_path: Path) -> NodeConfig:
    models = [{"name": name, "path": str(tmp_path / name)} for name in ("cls", "a", "b", "m")]
    steps = [
        {"name": "region", "model": "cls"},
        {"name": "organ", "select": {"step": "region", "models": {"chest": "a", "abdomen": "b"}}},
        {"name": "inside", "model": "m", "when": {"step": "organ", "label": "liver"}},
    ]
    route = {"name": "r", "steps": steps, "destinations": ["pacs"], "match": {}}
    return make_config(tmp_path, models=models, routes=[route])


def finding(series: str, **positive: bool) -> dict[str, object]:
    labels = [
        {"label": k, "positive": v, "probability": 0.9 if v else 0.1} for k, v in positive.items()
    ]
    return {"series_uid": series, "labels": labels}


def organ_jobs(sessions: sessionmaker[Session], config: NodeConfig) -> list[int]:
    """The region job done (series 1 chest, series 2 abdomen), its organ jobs made."""
    with sessions.begin() as session:
        study = add_study(session, "1.2.3", [{"uid": uid} for uid in SERIES])
        region = Job(
            study_id=study.id,
            route_name="r",
            model_name="cls",
            series_uids=SERIES,
            destinations=["pacs"],
            state=WorkState.DONE,
            findings={
                "series": [
                    finding(SERIES[0], chest=True, abdomen=False),
                    finding(SERIES[1], chest=False, abdomen=True),
                ]
            },
            created_at=utcnow(),
        )
        session.add(region)
        session.flush()
        written = advance_chain(session, config, region.id)
    assert [(s.step, s.model_name, s.state) for s in written] == [
        ("organ", "a", WorkState.QUEUED),
        ("organ", "b", WorkState.QUEUED),
    ]
    return [s.job_id for s in written]


def finish(sessions: sessionmaker[Session], config: NodeConfig, job_id: int) -> list[int]:
    with sessions.begin() as session:
        job = session.get_one(Job, job_id)
        job.state = WorkState.DONE
        job.findings = {"series": [finding(uid, liver=True) for uid in job.series_uids]}
        return [s.job_id for s in advance_chain(session, config, job_id)]


def test_a_step_after_a_selection_gets_a_row_per_selected_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = chain(tmp_path)
    first, second = organ_jobs(sessions, config)
    (after_first,) = finish(sessions, config, first)
    (after_second,) = finish(sessions, config, second)
    assert after_first != after_second
    assert finish(sessions, config, first) == []  # queued: left alone
    with sessions.begin() as session:
        session.get_one(Job, after_first).state = WorkState.FAILED
    assert finish(sessions, config, first) == [after_first]  # renewed, not duplicated
    with sessions() as session:
        rows = session.scalars(select(Job).where(Job.step == "inside").order_by(Job.id)).all()
    assert [(r.upstream_job_id, r.series_uids) for r in rows] == [
        (first, [SERIES[0]]),
        (second, [SERIES[1]]),
    ]


def old_job_uniqueness(url: str) -> None:
    """Give the jobs table the unique key of the versions before chained models."""
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("ALTER TABLE jobs DROP CONSTRAINT uq_job_study_model_step"))
                connection.execute(
                    text(
                        "ALTER TABLE jobs ADD CONSTRAINT uq_job_study_model"
                        " UNIQUE (study_id, generation, model_name)"
                    )
                )
                return
            create = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'jobs'")
            ).scalar_one()
            connection.execute(text("DROP TABLE jobs"))
            connection.execute(
                text(
                    create.replace(
                        "CONSTRAINT uq_job_study_model_step UNIQUE (study_id, generation,"
                        " model_name, route_name, step, upstream_job_id)",
                        "CONSTRAINT uq_job_study_model UNIQUE (study_id, generation, model_name)",
                    )
                )
            )
    finally:
        engine.dispose()


def test_on_an_older_database_a_row_that_does_not_fit_is_logged_not_fatal(
    own_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_job_uniqueness(own_database_url)
    engine = create_db_engine(own_database_url)
    try:
        sessions = session_factory(engine)
        config = chain(tmp_path)
        first, second = organ_jobs(sessions, config)
        assert len(finish(sessions, config, first)) == 1
        assert finish(sessions, config, second) == []  # its organ job still ends DONE
        with sessions() as session:
            assert session.get_one(Job, second).state == WorkState.DONE
    finally:
        engine.dispose()
    assert "the database predates chained models" in caplog.text
