"""Match semantics of ``[[routes]]``: values, lists, regexes, ranges, multi-valued facts."""

from __future__ import annotations

from typing import Any

import pytest

from dicom_node.config import RouteConfig
from dicom_node.work.route_match import route_matches, split_values


def route(match: dict[str, Any]) -> RouteConfig:
    return RouteConfig.model_validate(
        {"name": "r", "models": ["m"], "match": match, "destinations": ["pacs"]}
    )


@pytest.mark.parametrize(
    ("match", "facts", "expected"),
    [
        ({"Modality": "CT"}, {"Modality": ["CT"]}, True),
        ({"Modality": "CT"}, {"Modality": ["MR"]}, False),
        ({"Modality": "ct"}, {"Modality": ["CT"]}, False),  # exact, case kept
        ({"Modality": ["CR", "DX"]}, {"Modality": ["DX"]}, True),
        ({"Modality": ["CR", "DX"]}, {"Modality": ["CT"]}, False),
        ({"SeriesNumber": 2}, {"SeriesNumber": ["2.0"]}, True),  # numbers compare as numbers
        ({"SeriesNumber": 2}, {"SeriesNumber": ["twenty"]}, False),
        (
            {"SeriesDescription": {"regex": "(?i)chest"}},
            {"SeriesDescription": ["CT CHEST W/O"]},
            True,
        ),
        ({"SeriesDescription": {"regex": "^CHEST$"}}, {"SeriesDescription": ["CT CHEST"]}, False),
        ({"SliceThickness": {"min": 0.5, "max": 3}}, {"SliceThickness": ["2.5"]}, True),
        ({"SliceThickness": {"min": 0.5, "max": 3}}, {"SliceThickness": ["3"]}, True),  # closed
        ({"SliceThickness": {"min": 0.5, "max": 3}}, {"SliceThickness": ["5"]}, False),
        ({"SliceThickness": {"max": 3}}, {"SliceThickness": ["n/a"]}, False),
        ({"SliceThickness": {"min": 1}}, {}, False),  # missing never matches
        ({"BodyPartExamined": {"regex": ".*"}}, {}, False),
        ({"ImageType": "AXIAL"}, {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}, True),
        ({"CallingAETitle": "ORTHANC"}, {"CallingAETitle": ["ORTHANC"]}, True),
        (
            {"Modality": "CT", "CallingAETitle": "X"},
            {"Modality": ["CT"], "CallingAETitle": ["Y"]},
            False,
        ),
        ({}, {"Modality": ["CT"]}, True),  # no condition: every series
        (
            {"SOPClassUID": "CT Image Storage"},
            {"SOPClassUID": ["1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"]},
            True,
        ),
    ],
)
def test_match_semantics(
    match: dict[str, Any], facts: dict[str, list[str]], expected: bool
) -> None:
    assert route_matches(route(match), facts).matched is expected


def test_reason_names_keyword_value_and_condition() -> None:
    result = route_matches(route({"Modality": ["CR", "DX"]}), {"Modality": ["CT"]})
    assert not result.matched
    assert result.reason == "Modality='CT' is not ['CR', 'DX']"
    missing = route_matches(route({"BodyPartExamined": "CHEST"}), {})
    assert missing.reason == "BodyPartExamined missing (route wants 'CHEST')"


def test_split_values_drops_padding_and_empty_parts() -> None:
    assert split_values("ORIGINAL\\PRIMARY \\ AXIAL") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert split_values("") == []
    assert split_values(None) == []
