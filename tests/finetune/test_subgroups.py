"""Subgroups from DICOM headers and the equalized-odds gap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom import Dataset

from inference.finetune.subgroups import (
    age_band,
    patient_age_years,
    patient_sex,
    subgroup_results,
)


def _ds(**values: str) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_age_from_patient_age_then_birth_date() -> None:
    assert patient_age_years(_ds(PatientAge="045Y")) == 45
    assert patient_age_years(_ds(PatientAge="006M")) == pytest.approx(0.5)
    age = patient_age_years(_ds(PatientBirthDate="19800615", StudyDate="20240614"))
    assert age == pytest.approx(44.0, abs=0.01)
    assert patient_age_years(_ds(PatientAge="", PatientBirthDate="19800615")) is None


def test_age_bands_and_sex() -> None:
    assert age_band(10.0) == "0-17"
    assert age_band(40.0) == "40-64"
    assert age_band(65.0) == "65+"
    assert age_band(None) == "unknown"
    assert patient_sex(_ds(PatientSex="F")) == "F"
    assert patient_sex(_ds(PatientSex="")) == "unknown"


def test_equalized_odds_gap_is_the_larger_rate_spread() -> None:
    # Group F: TPR 1.0, FPR 0.5; group M: TPR 0.5, FPR 0.0 -> gap max(0.5, 0.5) = 0.5.
    sexes = ["F", "F", "F", "F", "M", "M", "M", "M"]
    truth = [1, 1, 0, 0, 1, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.1, 0.9, 0.2, 0.3, 0.1]
    result = subgroup_results("sex", sexes, truth, scores, 0.5, [str(i) for i in range(8)])
    by_group = {g.group: g for g in result.groups}
    assert by_group["F"].sensitivity == 1.0 and by_group["F"].false_positive_rate == 0.5
    assert by_group["M"].sensitivity == 0.5 and by_group["M"].false_positive_rate == 0.0
    assert result.equalized_odds_gap == pytest.approx(0.5)
    # Two positives a group: neither the groups' AUCs nor the gap get an interval.
    assert all(g.auc_ci95 is None and "too few to estimate" in str(g.note) for g in result.groups)
    assert result.gap_ci95 is None
    assert result.gap_note == (
        "too few to estimate: F 2 positive(s) and 2 negative(s), M 2 positive(s) and "
        "2 negative(s), fewer than 10 of each"
    )


def test_large_groups_get_patient_bootstrap_intervals() -> None:
    rng = np.random.default_rng(4)
    n = 240
    sexes = np.where(np.arange(n) % 2 == 0, "F", "M")
    truth = rng.random(n) < 0.4
    scores = truth * 0.6 + rng.random(n) * np.where(sexes == "F", 0.8, 1.2)
    patients = [f"P{i // 2}" for i in range(n)]  # two studies a patient
    result = subgroup_results("sex", sexes.tolist(), truth, scores, 0.55, patients, 200, 1)
    for group in result.groups:
        assert group.note is None and group.auc_ci95 is not None
        assert group.auc_ci95[0] < group.auc < group.auc_ci95[1]
    assert result.gap_note is None and result.gap_ci95 is not None
    assert result.gap_ci95[0] <= result.equalized_odds_gap <= result.gap_ci95[1]
    assert result.gap_ci95[1] - result.gap_ci95[0] > 0.02  # an interval, not a point


def test_gap_undefined_with_one_evaluable_group() -> None:
    result = subgroup_results("sex", ["F", "M"], [1, 0], [0.9, 0.1], 0.5, ["a", "b"])
    assert math.isnan(result.equalized_odds_gap)
    assert result.gap_note == "undefined: fewer than two groups hold both classes"
    with pytest.raises(ValueError, match="1 sex values and 2 patients but 2 targets"):
        subgroup_results("sex", ["F"], [1, 0], [0.9, 0.1], 0.5, ["a", "b"])
