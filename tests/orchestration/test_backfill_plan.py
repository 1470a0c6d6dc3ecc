"""The backfill's decisions without a network: which series the routes want from the
archive's C-FIND answers, the pacing of retrievals, the refusal message, the date range."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from dicom_node.config import PeerConfig, RouteConfig
from dicom_node.net.query_retrieve import FoundSeries, FoundStudy, QueryRetrieveError
from dicom_node.work.backfill import BackfillRequest
from dicom_node.work.backfill_pace import StudyPacer
from dicom_node.work.backfill_plan import plan_study, query_keywords

PEER = PeerConfig(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=4242)


def route(name: str, **match: Any) -> RouteConfig:
    return RouteConfig(name=name, models=["m"], match=match, destinations=["pacs"])


def study(**values: str) -> FoundStudy:
    return FoundStudy("1.2.3", {"StudyDate": "20261005", **values})


def series(uid: str, count: int | None = 10, **values: str) -> FoundSeries:
    counted = {} if count is None else {"NumberOfSeriesRelatedInstances": str(count)}
    return FoundSeries(uid, {**counted, **values})


def test_query_keywords_split_study_and_series_level() -> None:
    routes = [
        route("a", Modality="CT", StudyDescription={"regex": "chest"}, SOPClassUID="CT Image"),
        route("b", SliceThickness={"max": 3}, Modality="MR", CallingAETitle="ORTHANC"),
    ]
    keywords = query_keywords(routes)
    assert keywords.study == ("StudyDescription",)
    assert keywords.series == ("Modality", "SliceThickness")


def test_only_the_series_a_route_matches_are_wanted() -> None:
    routes = [route("chest-ct", Modality="CT", SeriesDescription={"regex": "(?i)chest"})]
    answered = [
        series("1", 120, Modality="CT", SeriesDescription="Chest 1mm"),
        series("2", 2, Modality="CT", SeriesDescription="Scout"),
        series("3", 1, Modality="SR"),
    ]
    plan = plan_study(routes, study(), answered, "ORTHANC")
    assert [s.series_instance_uid for s in plan.series] == ["1"]
    assert not plan.whole_study and plan.expected_instances == 120


def test_every_series_wanted_is_one_whole_study_with_the_study_count() -> None:
    plan = plan_study(
        [route("any")],
        study(NumberOfStudyRelatedInstances="13"),
        [series("1", None), series("2", None)],
        "ORTHANC",
    )
    assert plan.whole_study and plan.expected_instances == 13
    partial = plan_study([route("any")], study(), [series("1", None)], "ORTHANC")
    assert partial.expected_instances is None  # no count at all: retrieval outcome decides


def test_a_condition_the_archive_did_not_answer_is_left_to_routing() -> None:
    # No SliceThickness in the answer (an archive that does not index it): fetched, and
    # routing decides on the stored headers; a SOPClassUID condition likewise.
    routes = [route("thin", Modality="CT", SliceThickness={"max": 3}, SOPClassUID="CT Image")]
    plan = plan_study(routes, study(), [series("1", Modality="CT")], "ORTHANC")
    assert len(plan.series) == 1
    ruled_out = plan_study(
        routes, study(), [series("1", Modality="CT", SliceThickness="5")], "ORTHANC"
    )
    assert ruled_out.series == []
    assert "thin: SliceThickness='5' is not range [None, 3.0]" in ruled_out.reason


def test_study_level_values_and_the_archive_as_sender_are_facts() -> None:
    routes = [route("from-pacs", CallingAETitle="ORTHANC", StudyDescription="CT THORAX")]
    found = study(StudyDescription="CT THORAX")
    assert plan_study(routes, found, [series("1")], "ORTHANC").series
    assert not plan_study(routes, found, [series("1")], "OTHERPACS").series
    none = plan_study(routes, found, [], "ORTHANC")
    assert none.series == [] and "no series" in none.reason


def test_the_pacer_spaces_retrievals_and_keeps_no_debt() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = StudyPacer(6, clock=lambda: now[0], sleep=sleep)  # one every 10 s
    assert pacer.wait() == 0.0  # the first starts at once
    now[0] += 4.0  # a retrieval of 4 s
    assert pacer.wait() == pytest.approx(6.0)
    now[0] += 25.0  # a long one: the next starts at once, no burst after it
    assert pacer.wait() == 0.0
    assert pacer.wait() == pytest.approx(10.0)
    assert slept == pytest.approx([6.0, 10.0])
    unlimited = StudyPacer(None, clock=lambda: now[0], sleep=sleep)
    assert unlimited.wait() == unlimited.wait() == 0.0
    with pytest.raises(ValueError, match="positive number of studies per minute: 0"):
        StudyPacer(0)


def test_a_refusal_names_the_status_and_what_to_configure() -> None:
    error = QueryRetrieveError("C-MOVE", PEER, 0xA801, "Move Destination Unknown", "add AINODE")
    assert str(error) == (
        "C-MOVE refused by pacs (ORTHANC): status 0xA801 (Move Destination Unknown); add AINODE"
    )
    assert error.status == 0xA801 and error.reason.startswith("C-MOVE refused")
    closed = QueryRetrieveError("C-FIND", PEER, None, "the archive closed the association", "x")
    assert "no status (the archive closed the association)" in str(closed)


def test_the_study_date_range() -> None:
    assert BackfillRequest(PEER, date(2026, 10, 1)).study_dates == "20261001-"
    bounded = BackfillRequest(PEER, date(2026, 10, 1), date(2026, 10, 31))
    assert bounded.study_dates == "20261001-20261031"
