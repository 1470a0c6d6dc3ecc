"""Shadow mode: routes (or models of a route) that run and keep results but send nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Job, WorkState
from dicom_node.errors import ConfigError
from dicom_node.work.routing import route_complete_studies
from tests.orchestration.conftest import add_study, make_config


def ct_route(**keys: Any) -> dict[str, Any]:
    return {"name": "ct", "models": ["ct-model"], "match": {"Modality": "CT"}, **keys}


def routed_jobs(sessions: sessionmaker[Session], config: Any) -> list[Job]:
    with sessions.begin() as session:
        add_study(session, "1.2.9", [{"uid": "1.2.9.1", "modality": "CT"}])
    assert route_complete_studies(sessions, config) == 1
    with sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.model_name)))


def test_shadow_route_runs_with_no_destination(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    config = make_config(tmp_path, routes=[ct_route(mode="shadow", destinations=["pacs"])])
    (job,) = routed_jobs(sessions, config)
    assert (job.mode, job.state, job.destinations) == ("shadow", WorkState.QUEUED, [])


def test_shadow_route_sends_only_to_shadow_destinations(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    route = ct_route(mode="shadow", destinations=["pacs"], shadow_destinations=["modality"])
    (job,) = routed_jobs(sessions, make_config(tmp_path, routes=[route]))
    assert (job.mode, job.destinations) == ("shadow", ["modality"])


def test_going_live_is_removing_the_mode(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    config = make_config(tmp_path, routes=[ct_route(destinations=["pacs"])])
    (job,) = routed_jobs(sessions, config)
    assert (job.mode, job.destinations) == ("live", ["pacs"])


def test_shadow_model_in_a_live_route(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    route = ct_route(
        models=["ct-model", "cr-model"],
        destinations=["pacs"],
        shadow_models=["cr-model"],
        shadow_destinations=["modality"],
    )
    cr, ct = routed_jobs(sessions, make_config(tmp_path, routes=[route]))
    assert (cr.model_name, cr.mode, cr.destinations) == ("cr-model", "shadow", ["modality"])
    assert (ct.model_name, ct.mode, ct.destinations) == ("ct-model", "live", ["pacs"])


def test_a_live_route_makes_the_model_live(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    routes = [
        ct_route(mode="shadow", shadow_destinations=["modality"]),
        ct_route(name="all-ct", destinations=["pacs"]),
    ]
    (job,) = routed_jobs(sessions, make_config(tmp_path, routes=routes))
    assert (job.mode, job.destinations) == ("live", ["modality", "pacs"])


def test_live_route_still_needs_a_destination(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\].*needs destinations"):
        make_config(tmp_path, routes=[ct_route()])


def test_shadow_models_must_be_models_of_the_route(tmp_path: Path) -> None:
    route = ct_route(destinations=["pacs"], shadow_models=["cr-model"])
    with pytest.raises(ConfigError, match=r"shadow_models names 'cr-model'"):
        make_config(tmp_path, routes=[route])


def test_unknown_shadow_destination_is_a_config_problem(tmp_path: Path) -> None:
    route = ct_route(mode="shadow", shadow_destinations=["lab"])
    with pytest.raises(
        ConfigError, match=r"routes\[0\]\.shadow_destinations\[0\]: no peer named 'lab'"
    ):
        make_config(tmp_path, routes=[route])
