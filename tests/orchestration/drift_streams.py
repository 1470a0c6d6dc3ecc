"""Generated feature records for drift monitoring: a reference population and shifts of it.

Each record is what the worker keeps per series (`dicom_node.work.findings`): header
attributes, age band, the statistics of the preprocessed input, and one label's
probability and call. A keyword of `stream` replaces one setting of the generator,
so that a test (or ``python -m benchmarks.drift_alarms``) shifts one thing at a time.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Job, WorkState, utcnow
from tests.orchestration.conftest import add_study

VENDORS = {"GE": 0.5, "SIEMENS": 0.3, "PHILIPS": 0.2}
KERNELS = {"STANDARD": 0.7, "BONE": 0.3}
KVPS = {100.0: 0.2, 120.0: 0.6, 140.0: 0.2}
AGE_BANDS = {"18-39": 0.2, "40-64": 0.45, "65+": 0.35}
PREVALENCE = 0.2
THRESHOLD = 0.5

# The shifts the issue names, each with the feature it must be flagged on.
SHIFTS: dict[str, tuple[dict[str, Any], str]] = {
    "new vendor": (
        {"vendors": {"GE": 0.2, "SIEMENS": 0.2, "PHILIPS": 0.2, "CANON": 0.4}},
        "Manufacturer",
    ),
    "new kernel": ({"kernels": {"STANDARD": 0.2, "BONE": 0.3, "LUNG": 0.5}}, "ConvolutionKernel"),
    "lower kVp": ({"kvp": {80.0: 0.5, 100.0: 0.5}}, "KVP"),
    "older patients": ({"ages": {"40-64": 0.3, "65+": 0.7}}, "AgeBand"),
    "intensity offset": ({"intensity_offset": 0.05}, "intensity_p50"),
    "higher positive rate": ({"prevalence": 0.5}, "positive_rate:nodule"),
    "higher scores": ({"score_shift": 0.15}, "score:nodule"),
}


def _pick(rng: np.random.Generator, shares: dict[Any, float]) -> Any:
    return list(shares)[int(rng.choice(len(shares), p=list(shares.values())))]


def stream(rng: np.random.Generator, n: int, **shift: Any) -> list[dict[str, Any]]:
    """``n`` series records; ``shift`` replaces a setting: vendors, kernels, kvp, ages
    (category shares), intensity_offset (added to the preprocessed intensities),
    prevalence (of the finding), score_shift (added to every probability)."""
    out = []
    for _ in range(n):
        diseased = rng.random() < shift.get("prevalence", PREVALENCE)
        score = rng.beta(5, 2) if diseased else rng.beta(2, 5)
        score = float(np.clip(score + shift.get("score_shift", 0.0), 0, 1))
        level = rng.normal(0.30, 0.03) + shift.get("intensity_offset", 0.0)
        out.append(
            {
                "labels": [
                    {"label": "nodule", "probability": score, "positive": score >= THRESHOLD}
                ],
                "inputs": {
                    "Manufacturer": str(_pick(rng, shift.get("vendors", VENDORS))),
                    "ManufacturerModelName": str(rng.choice(["A", "B"])),
                    "ConvolutionKernel": str(_pick(rng, shift.get("kernels", KERNELS))),
                    "BodyPartExamined": "CHEST",
                    "PatientSex": str(rng.choice(["F", "M"])),
                    "AgeBand": str(_pick(rng, shift.get("ages", AGE_BANDS))),
                    "KVP": float(_pick(rng, shift.get("kvp", KVPS))),
                    "SliceThickness": float(rng.choice([1.0, 1.25, 2.5])),
                    "PixelSpacing": float(rng.normal(0.7, 0.05)),
                    "intensity_p5": float(level - 0.25 + rng.normal(0, 0.01)),
                    "intensity_p50": float(level),
                    "intensity_p95": float(level + 0.35 + rng.normal(0, 0.02)),
                    "foreground_fraction": float(rng.beta(8, 4)),
                },
            }
        )
    return out


def add_done_jobs(
    sessions: sessionmaker[Session],
    records: list[dict[str, Any]],
    ages_days: list[float] | None = None,
    model: str = "ct",
) -> None:
    """One done job of ``model`` per record, finished ``ages_days`` ago (default: now),
    oldest first, as the worker leaves it."""
    now = utcnow()
    with sessions.begin() as session:
        for index, record in enumerate(records):
            uid = f"2.25.{uuid.uuid4().int}"
            study = add_study(session, uid, [{"uid": f"{uid}.1"}])
            age = ages_days[index] if ages_days else 0.0
            session.add(
                Job(
                    study_id=study.id,
                    route_name=model,
                    model_name=model,
                    state=WorkState.DONE,
                    finished_at=now - timedelta(days=age, microseconds=len(records) - index),
                    findings={"series": [record], "files": []},
                )
            )
