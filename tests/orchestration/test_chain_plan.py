"""Deciding a chain's later steps from an earlier step's findings (pure: no database)."""

from __future__ import annotations

from typing import Any

from dicom_node.config import RouteConfig, StepCondition, StepSelect
from dicom_node.db.schema import WorkState
from dicom_node.work.chain import condition_reason, plan_after, selected_model


def record(series: str, **labels: dict[str, Any]) -> dict[str, Any]:
    return {"series_uid": series, "labels": [{"label": k, **v} for k, v in labels.items()]}


LIVER = record("1.1", liver={"positive": True, "probability": 0.9, "volume_ml": 1500.0})
NO_LIVER = record("1.2", liver={"positive": False, "probability": 0.1, "volume_ml": 0.0})


def test_a_label_alone_means_present() -> None:
    condition = StepCondition(step="a", label="liver")
    assert condition_reason(condition, LIVER) is None
    assert condition_reason(condition, NO_LIVER) == "step 'a' did not find 'liver'"
    absent = StepCondition(step="a", label="liver", present=False)
    assert condition_reason(absent, NO_LIVER) is None
    assert condition_reason(absent, LIVER) == "step 'a' found 'liver'"
    assert condition_reason(StepCondition(step="a", label="lung"), LIVER) == (
        "step 'a' reports no label 'lung'"
    )


def test_bounds_hold_without_the_positive_call() -> None:
    """A bound replaces the package's threshold: a low-probability finding can gate."""
    low = StepCondition(step="a", label="liver", min_probability=0.05)
    assert condition_reason(low, NO_LIVER) is None
    high = StepCondition(step="a", label="liver", min_probability=0.95)
    assert condition_reason(high, LIVER) == "step 'a': 'liver' probability 0.9 is below 0.95"
    big = StepCondition(step="a", label="liver", max_volume_ml=1000)
    assert condition_reason(big, LIVER) == "step 'a': 'liver' volume (ml) 1500 is above 1000"
    no_volume = StepCondition(step="a", label="liver", min_volume_ml=1)
    assert condition_reason(no_volume, record("1.3", liver={"positive": True})) == (
        "step 'a': 'liver' has no volume (ml)"
    )


def test_the_most_probable_positive_label_selects() -> None:
    choice = StepSelect(step="kind", models={"chest": "seg-chest", "abdomen": "seg-abd"})
    both = record(
        "1.1",
        chest={"positive": True, "probability": 0.7},
        abdomen={"positive": True, "probability": 0.8},
        head={"positive": False, "probability": 0.99},
    )
    assert selected_model(choice, both) == ("seg-abd", "abdomen")
    head = record("1.2", head={"positive": True, "probability": 0.9})
    assert selected_model(choice, head) == (
        None,
        "step 'kind' labelled it 'head', which selects no model",
    )
    assert selected_model(choice, record("1.3")) == (None, "step 'kind' found no label")


ROUTE = RouteConfig.model_validate(
    {
        "name": "r",
        "destinations": ["pacs"],
        "steps": [
            {"name": "a", "model": "ma"},
            {"name": "b", "model": "mb", "when": {"step": "a", "label": "liver"}},
            {"name": "c", "model": "mc", "input_mask": "b:organ"},
            {"name": "d", "model": "md", "when": {"step": "a", "label": "liver", "present": False}},
        ],
    }
)


def test_a_later_step_runs_on_the_series_where_its_condition_holds() -> None:
    planned = plan_after(ROUTE, ROUTE.steps[0], WorkState.DONE, {"series": [LIVER, NO_LIVER]}, None)
    by_step = {p.step.step_name: p for p in planned}
    assert by_step["b"].series_uids == ["1.1"]
    assert by_step["b"].reason == "series 1.2: step 'a' did not find 'liver'"
    assert by_step["d"].series_uids == ["1.2"]
    assert "c" not in by_step  # decided when b ends


def test_a_failed_step_takes_every_later_step_along_as_not_run() -> None:
    planned = plan_after(ROUTE, ROUTE.steps[0], WorkState.FAILED, {}, "boom")
    assert [(p.step.step_name, p.after, p.runs) for p in planned] == [
        ("b", "a", False),
        ("c", "b", False),
        ("d", "a", False),
    ]
    assert planned[0].reason == "not run: step 'a' failed: boom"
    assert planned[1].reason == "not run: step 'b' was skipped: not run: step 'a' failed: boom"


def test_a_mask_needs_its_label_found() -> None:
    found = record("1.1", organ={"positive": True, "voxels": 10})
    empty = record("1.2", organ={"positive": False, "voxels": 0})
    planned = plan_after(ROUTE, ROUTE.steps[1], WorkState.DONE, {"series": [found, empty]}, None)
    (c,) = planned
    assert c.series_uids == ["1.1"]
    assert c.reason == "series 1.2: step 'b' found no 'organ' to restrict the input to"
