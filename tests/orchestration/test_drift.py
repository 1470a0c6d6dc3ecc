"""Drift monitoring on generated streams: quiet on the reference, loud on a shift.

Measured here (seeded, so it reproduces): over 300 windows of 100 studies drawn from
the reference distribution, the share of windows with any feature flagged is printed
by ``pytest -s -k false_alarm`` and asserted below 2%.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DriftSection
from dicom_node.db.schema import Job, WorkState, utcnow
from dicom_node.work.drift import (
    ProfileError,
    build_profile,
    compare,
    psi,
    read_profile,
    window_records,
)
from dicom_node.work.drift_monitor import DriftCollector
from tests.orchestration.conftest import add_study, make_config

SETTINGS = DriftSection(window_studies=100, min_studies=30)
VENDORS = {"GE": 0.5, "SIEMENS": 0.3, "PHILIPS": 0.2}
KERNELS = {"STANDARD": 0.7, "BONE": 0.3}
THRESHOLD = 0.5


def stream(rng: np.random.Generator, n: int, **shift: Any) -> list[dict[str, Any]]:
    """``n`` series records; ``shift`` replaces a generator setting (vendors, kernels,
    kvp, score_shift)."""
    vendors = shift.get("vendors", VENDORS)
    kernels = shift.get("kernels", KERNELS)
    kvps = shift.get("kvp", {100.0: 0.2, 120.0: 0.6, 140.0: 0.2})
    out = []
    for _ in range(n):
        score = float(np.clip(rng.beta(2, 5) + shift.get("score_shift", 0.0), 0, 1))
        out.append(
            {
                "labels": [
                    {"label": "nodule", "probability": score, "positive": score >= THRESHOLD}
                ],
                "inputs": {
                    "Manufacturer": str(rng.choice(list(vendors), p=list(vendors.values()))),
                    "ManufacturerModelName": str(rng.choice(["A", "B"])),
                    "ConvolutionKernel": str(rng.choice(list(kernels), p=list(kernels.values()))),
                    "BodyPartExamined": "CHEST",
                    "PatientSex": str(rng.choice(["F", "M"])),
                    "KVP": float(rng.choice(list(kvps), p=list(kvps.values()))),
                    "SliceThickness": float(rng.choice([1.0, 1.25, 2.5])),
                    "PixelSpacing": float(rng.normal(0.7, 0.05)),
                },
            }
        )
    return out


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Any:
    document = build_profile("ct", "1.0", stream(np.random.default_rng(0), 2000))
    path = tmp_path_factory.mktemp("pkg") / "profile.json"
    path.write_text(json.dumps(document))
    return read_profile(path, ["nodule"])


def drifted(profile: Any, records: list[dict[str, Any]]) -> set[str]:
    return {d.feature for d in compare("ct", profile, records, SETTINGS) if d.status == "drift"}


def test_false_alarm_rate_on_the_reference_distribution(profile: Any) -> None:
    rng = np.random.default_rng(1)
    windows = 300
    alarms = sum(bool(drifted(profile, stream(rng, 100))) for _ in range(windows))
    rate = alarms / windows
    print(f"false-alarm rate: {alarms}/{windows} windows of 100 studies = {rate:.1%}")
    assert rate < 0.02


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        ({"vendors": {"GE": 0.2, "SIEMENS": 0.2, "PHILIPS": 0.2, "CANON": 0.4}}, "Manufacturer"),
        ({"kernels": {"STANDARD": 0.2, "BONE": 0.3, "LUNG": 0.5}}, "ConvolutionKernel"),
        ({"kvp": {80.0: 0.5, 100.0: 0.5}}, "KVP"),
        ({"score_shift": 0.15}, "score:nodule"),
    ],
)
def test_shifted_stream_is_flagged_on_its_feature(
    profile: Any, shift: dict[str, Any], expected: str
) -> None:
    found = drifted(profile, stream(np.random.default_rng(2), 100, **shift))
    assert expected in found
    # The score drives the positive call: both move together; nothing else does.
    assert found <= {expected, "positive_rate:nodule"}


def test_too_few_studies_are_not_judged(profile: Any) -> None:
    rows = compare("ct", profile, stream(np.random.default_rng(3), 10, kvp={80.0: 1.0}), SETTINGS)
    assert {r.status for r in rows} == {"too_few"}


def test_psi_of_identical_mix_is_zero_and_grows_with_a_new_category() -> None:
    from collections import Counter

    assert psi({"a": 0.5, "b": 0.5}, Counter({"a": 50, "b": 50})) == pytest.approx(0.0)
    assert psi({"a": 0.5, "b": 0.5}, Counter({"a": 40, "b": 40, "c": 20})) > 0.25


def test_profile_must_match_the_package_labels(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(build_profile("ct", "1.0", stream(np.random.default_rng(4), 5))))
    with pytest.raises(ProfileError, match=r"positive_rates: labels \['nodule'\] differ"):
        read_profile(path, ["mass"])
    path.write_text("{")
    with pytest.raises(ProfileError, match="unreadable"):
        read_profile(path, ["nodule"])


def add_done_jobs(
    sessions: sessionmaker[Session],
    records: list[dict[str, Any]],
    ages_days: list[float] | None = None,
) -> None:
    """One done job per record, finished ``ages_days`` ago (default: now)."""
    now = utcnow()
    with sessions.begin() as session:
        for index, record in enumerate(records):
            study = add_study(session, f"1.3.{index}", [{"uid": f"1.3.{index}.1"}])
            age = ages_days[index] if ages_days else 0.0
            session.add(
                Job(
                    study_id=study.id,
                    route_name="ct",
                    model_name="ct",
                    state=WorkState.DONE,
                    finished_at=now - timedelta(days=age),
                    findings={"series": [record], "files": []},
                )
            )


def test_window_is_the_last_studies_within_the_days(sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    records = stream(np.random.default_rng(5), 4)
    add_done_jobs(sessions, records, ages_days=[1, 2, 3, 40])
    settings = DriftSection(window_studies=2, window_days=30)
    with sessions() as session:
        assert window_records(session, "ct", settings, now) == records[:2]
        wide = DriftSection(window_studies=10, window_days=30)
        assert window_records(session, "ct", wide, now) == records[:3]  # 40 days: out


def test_gauges_and_one_warning_per_drifting_feature(
    sessions: sessionmaker[Session],
    profile: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(tmp_path, drift={"window_studies": 60, "min_studies": 30})
    shifted = stream(np.random.default_rng(6), 60, kvp={80.0: 1.0})
    add_done_jobs(sessions, shifted)
    collector = DriftCollector(config, sessions, {"ct": profile})
    with caplog.at_level(logging.WARNING, logger="dicom_node.work.drift_monitor"):
        drift, rates = collector.collect()
        list(collector.collect())  # a second scrape: no second warning
    values = {s.labels["feature"]: s.value for s in drift.samples}
    assert values["Manufacturer"] < 0.25 and values["KVP"] == pytest.approx(1.0)
    (rate,) = rates.samples
    positives = sum(r["labels"][0]["positive"] for r in shifted) / len(shifted)
    assert rate.labels == {"model": "ct", "label": "nodule"} and rate.value == positives
    warned = [r for r in caplog.records if r.getMessage() == "model input or output drifts"]
    assert [r.feature for r in warned] == ["KVP"]  # type: ignore[attr-defined]
