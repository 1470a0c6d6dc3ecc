"""Routing complete studies into jobs, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Job, Study, StudyState, WorkState
from dicom_node.work.routing import route_complete_studies, unmatchable_conditions
from tests.orchestration.conftest import add_study, make_config

CR = "1.2.840.10008.5.1.4.1.1.1"


def jobs_of(session: Session, study_uid: str) -> list[Job]:
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
    return list(session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)))


def test_one_job_per_model_with_matched_series(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        routes=[
            {
                "name": "ct",
                "models": ["ct-model"],
                "match": {"Modality": "CT"},
                "destinations": ["pacs"],
            },
            {
                "name": "thin",
                "models": ["ct-model", "cr-model"],
                "match": {"SliceThickness": {"max": 2}},
                "reply_to_sender": True,
            },
        ],
    )
    with sessions.begin() as session:
        add_study(
            session,
            "1.2.3",
            [
                {"uid": "1.2.3.1", "modality": "CT", "routing_fields": {"SliceThickness": "5"}},
                {"uid": "1.2.3.2", "modality": "CT", "routing_fields": {"SliceThickness": "1.25"}},
                {"uid": "1.2.3.3", "modality": "SR"},
            ],
            calling_ae="CTSCANNER",
        )
        add_study(session, "1.2.4", [{"modality": "RECEIVING"}], state=StudyState.RECEIVING)
    assert route_complete_studies(sessions, config) == 1
    assert route_complete_studies(sessions, config) == 0  # nothing routed twice
    with sessions() as session:
        ct, cr = jobs_of(session, "1.2.3")
        assert (ct.model_name, ct.route_name, ct.state) == ("ct-model", "ct+thin", WorkState.QUEUED)
        assert ct.series_uids == ["1.2.3.1", "1.2.3.2"]
        assert ct.destinations == ["pacs", "modality"]  # reply_to_sender: the calling AE's peer
        assert (cr.model_name, cr.series_uids, cr.destinations) == (
            "cr-model",
            ["1.2.3.2"],
            ["modality"],
        )
        study = session.scalars(select(Study).where(Study.study_instance_uid == "1.2.3")).one()
        assert study.state == StudyState.ROUTED
        assert "ct-model (ct+thin: 2 series)" in (study.routing_reason or "")
        assert jobs_of(session, "1.2.4") == []


def test_study_without_matching_route_is_skipped_with_reason(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with sessions.begin() as session:
        add_study(session, "1.2.5", [{"uid": "1.2.5.1", "modality": "MR"}])
    assert route_complete_studies(sessions, config) == 1
    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == StudyState.SKIPPED
        assert study.routing_reason == (
            "no route matched: route 'ct': series 1.2.5.1: Modality='MR' is not 'CT'"
        )
        assert jobs_of(session, "1.2.5") == []


def test_sop_class_and_calling_ae_match_from_instance_rows(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        routes=[
            {
                "name": "cr",
                "models": ["cr-model"],
                "match": {
                    "SOPClassUID": "Computed Radiography Image Storage",
                    "CallingAETitle": ["ORTHANC"],
                },
                "destinations": ["pacs"],
            }
        ],
    )
    with sessions.begin() as session:
        add_study(session, "1.2.6", [{"uid": "1.2.6.1", "modality": "CR", "sop_class": CR}])
        add_study(session, "1.2.7", [{"modality": "CR", "sop_class": CR}], calling_ae="OTHER")
    assert route_complete_studies(sessions, config) == 2
    with sessions() as session:
        assert [j.series_uids for j in jobs_of(session, "1.2.6")] == [["1.2.6.1"]]
        assert jobs_of(session, "1.2.7") == []


def test_reply_to_sender_without_known_peer_skips_job_with_reason(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        routes=[
            {
                "name": "back",
                "models": ["ct-model"],
                "match": {"Modality": "CT"},
                "reply_to_sender": True,
            }
        ],
    )
    with sessions.begin() as session:
        add_study(session, "1.2.8", [{"modality": "CT"}], calling_ae="UNKNOWN")
    route_complete_studies(sessions, config)
    with sessions() as session:
        (job,) = jobs_of(session, "1.2.8")
        assert job.state == WorkState.SKIPPED
        assert "no peer has the calling AE title 'UNKNOWN'" in (job.error or "")


def test_reopened_study_gets_new_jobs_and_supersedes_queued_ones(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with sessions.begin() as session:
        add_study(session, "1.2.9", [{"modality": "CT"}])
    route_complete_studies(sessions, config)
    with sessions.begin() as session:  # what the listener and completion do on re-open
        study = session.scalars(select(Study)).one()
        study.generation += 1
        study.state = StudyState.COMPLETE
    route_complete_studies(sessions, config)
    with sessions() as session:
        old, new = jobs_of(session, "1.2.9")
        assert (old.generation, old.state) == (0, WorkState.SKIPPED)
        assert old.error == "superseded by generation 1"
        assert (new.generation, new.state) == (1, WorkState.QUEUED)


def test_conditions_on_keywords_the_index_does_not_keep_are_reported(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        routes=[
            {
                "name": "heavy",
                "models": ["ct-model"],
                "match": {"Modality": "CT", "PatientWeight": {"min": 100}},
                "destinations": ["pacs"],
            }
        ],
    )
    ((key, message),) = unmatchable_conditions(config)
    assert key == "routes[0].match.PatientWeight"
    assert message.startswith("not kept by the listener's index, so this route never matches")
