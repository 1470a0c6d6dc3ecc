"""Chained routes in the config: every mistake named by its key, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import NodeConfig, parse_config
from dicom_node.errors import ConfigError
from dicom_node.work.package_check import model_package_problems
from tests.orchestration.chain_models import classifier_package, threshold_package

PEER = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
MODELS = ["cls", "seg", "seg2", "other"]


def config_with(steps: list[dict[str, Any]], *more_routes: dict[str, Any]) -> NodeConfig:
    route = {"name": "chain", "steps": steps, "destinations": ["pacs"]}
    data = {
        "peers": [PEER],
        "models": [{"name": name, "path": f"models/{name}"} for name in MODELS],
        "routes": [route, *more_routes],
    }
    return parse_config(data, "node.toml", Path("/etc/node"))


def problems_of(steps: list[dict[str, Any]], *more_routes: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError, match="problem") as info:
        config_with(steps, *more_routes)
    return info.value.problems


def test_a_chain_is_valid_and_knows_its_order() -> None:
    config = config_with(
        [
            {"model": "cls"},
            {
                "name": "organ",
                "select": {"step": "cls", "models": {"liver": "seg", "lung": "seg2"}},
            },
            {
                "model": "other",
                "when": {"step": "organ", "label": "liver", "min_volume_ml": 10},
                "input_mask": "organ:liver",
            },
        ]
    )
    route = config.routes[0]
    assert route.entry_models() == ["cls"]
    assert route.all_models() == ["cls", "seg", "seg2", "other"]
    assert [s.step_name for s in route.steps_after("cls")] == ["organ"]
    assert [s.step_name for s in route.steps_after("organ")] == ["other"]
    assert route.steps[2].mask() == ("organ", "liver")


def test_a_plain_route_stays_valid_and_an_empty_one_is_not() -> None:
    data = {
        "peers": [PEER],
        "models": [{"name": "m", "path": "models/m"}],
        "routes": [{"name": "r", "destinations": ["pacs"]}],
    }
    with pytest.raises(ConfigError, match="a route needs models or steps"):
        parse_config(data, "node.toml", Path("/etc/node"))


def test_unknown_models_and_steps_are_named_by_key() -> None:
    found = problems_of(
        [
            {"model": "nope"},
            {"model": "seg", "when": {"step": "ghost", "label": "x"}},
            {"name": "pick", "select": {"step": "seg", "models": {"a": "missing"}}},
        ]
    )
    assert ("routes[0].steps[0].model", "no model named 'nope'") in found
    assert ("routes[0].steps[1].when.step", "no step named 'ghost' in this route") in found
    assert ("routes[0].steps[2].select.models.a", "no model named 'missing'") in found


def test_a_cycle_is_an_error_naming_it() -> None:
    found = problems_of(
        [
            {"name": "a", "model": "seg", "when": {"step": "b", "label": "x"}},
            {"name": "b", "model": "seg2", "input_mask": "a:x"},
        ]
    )
    assert ("routes[0].steps[0].when.step", "cycle: a -> b -> a") in found
    assert ("routes[0].steps[1].input_mask", "cycle: b -> a -> b") in found


def test_a_step_after_two_steps_duplicates_and_shapes_are_errors() -> None:
    found = problems_of(
        [
            {"name": "a", "model": "cls"},
            {"name": "b", "model": "seg"},
            {
                "name": "b",
                "model": "seg2",
                "when": {"step": "a", "label": "x"},
                "input_mask": "b:y",
            },
            {"name": "c", "model": "seg", "when": {"step": "a", "label": "x"}},
        ]
    )
    assert ("routes[0].steps[2].name", "duplicate step name 'b'") in found
    assert (
        "routes[0].steps[2]",
        "names steps 'a' and 'b': a step runs after one earlier step",
    ) in found
    assert any(key == "routes[0].steps[3].model" and "already runs" in msg for key, msg in found)
    shapes = problems_of(
        [
            {"model": "cls", "select": {"step": "x", "models": {"a": "seg"}}},
            {"model": "seg", "input_mask": "nolabel"},
        ]
    )
    assert any(
        key == "routes[0].steps[0]" and "exactly one of model and select" in m for key, m in shapes
    )
    assert any(
        key == "routes[0].steps[1].input_mask" and 'not "STEP:LABEL"' in m for key, m in shapes
    )


def test_a_later_step_model_runs_in_no_other_route() -> None:
    other = {"name": "plain", "models": ["seg"], "destinations": ["pacs"]}
    found = problems_of(
        [{"model": "cls"}, {"model": "seg", "when": {"step": "cls", "label": "x"}}], other
    )
    assert any(
        key == "routes[0].steps[1]" and "also at routes[1].models[0]" in message
        for key, message in found
    )


def test_shadow_models_may_name_step_models() -> None:
    config = config_with(
        [{"model": "cls"}, {"model": "seg", "when": {"step": "cls", "label": "x"}}]
    )
    route = config.routes[0].model_copy(update={"shadow_models": ["seg"]})
    assert route.is_shadow("seg")


@pytest.fixture
def packaged(tmp_path: Path) -> dict[str, Path]:
    return {
        "cls": classifier_package(tmp_path / "cls", "cls", {"liver": 1.0, "lung": -1.0}),
        "seg": threshold_package(tmp_path / "seg", "seg", 300.5, "dense"),
        "seg2": threshold_package(tmp_path / "seg2", "seg2", -200.5, "dense"),
        "other": threshold_package(tmp_path / "other", "other", 0.5, "soft"),
    }


def package_problems(
    packaged: dict[str, Path], steps: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    data = {
        "peers": [PEER],
        "models": [{"name": name, "path": str(path)} for name, path in packaged.items()],
        "routes": [{"name": "chain", "steps": steps, "destinations": ["pacs"]}],
    }
    return model_package_problems(parse_config(data, "node.toml", Path("/etc/node")))


def test_check_config_with_packages_names_what_an_earlier_model_cannot_give(
    packaged: dict[str, Path],
) -> None:
    found = package_problems(
        packaged,
        [
            {"model": "cls"},
            {"model": "seg", "when": {"step": "cls", "label": "kidney"}, "input_mask": "cls:liver"},
            {"model": "seg2", "when": {"step": "cls", "label": "liver", "min_volume_ml": 5}},
            {"name": "pick", "select": {"step": "seg", "models": {"dense": "other"}}},
        ],
    )
    assert (
        "routes[0].steps[1].when.label",
        "model 'cls' (step 'cls') has no label 'kidney' (its labels: liver, lung)",
    ) in found
    assert (
        "routes[0].steps[1].input_mask",
        "model 'cls' (step 'cls') is a classification model, not a segmentation: no mask",
    ) in found
    assert (
        "routes[0].steps[2].when",
        "model 'cls' (step 'cls') is a classification model: it gives no volumes",
    ) in found
    assert (
        "routes[0].steps[3].select.step",
        "model 'seg' (step 'seg') is a segmentation model: only a classifier's label selects",
    ) in found


def test_check_config_with_packages_accepts_a_sound_chain(packaged: dict[str, Path]) -> None:
    assert (
        package_problems(
            packaged,
            [
                {"model": "cls"},
                {
                    "name": "pick",
                    "select": {"step": "cls", "models": {"liver": "seg", "lung": "seg2"}},
                },
                {"model": "other", "when": {"step": "pick", "label": "dense"}},
            ],
        )
        == []
    )
