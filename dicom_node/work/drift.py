"""Drift: a model's recent inputs and outputs compared with its package's reference profile.

A package may carry ``profile.json``: what the model saw when it was validated, built
from feature records (`dicom_node.work.drift_features`) by `build_profile`. The node
keeps the same record for every series it runs; `compare` takes a window of them
(`current_window`: the last ``window_studies`` jobs within ``window_days``) and tests
each feature:

- categorical inputs (vendor, kernel, ...): population stability index (PSI) of the
  window's mix against the reference shares;
- numeric inputs and output scores: two-sample Kolmogorov-Smirnov test against the
  reference sample (``scipy.stats.ks_2samp``);
- each label's positive rate: exact binomial test against the reference rate.

A feature drifts when PSI reaches ``psi_threshold`` or the p-value falls below
``p_value``; windows with fewer than ``min_studies`` records are not judged.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.config import DriftSection
from dicom_node.db.schema import Job, WorkState
from dicom_node.errors import DicomNodeError
from dicom_node.work.drift_features import CATEGORICAL_INPUTS, NUMERIC_INPUTS, output_features
from inference import ModelPackage

PROFILE_FILE = "profile.json"
PROFILE_FORMAT = 1
# Shares below this count as this in PSI, so that an unseen category scores high but finite.
PSI_FLOOR = 1e-4


class ProfileError(DicomNodeError):
    """A ``profile.json`` is unreadable or does not match its package; names file and key."""

    def __init__(self, path: Path, key: str, reason: str) -> None:
        self.path, self.key, self.reason = path, key, reason
        super().__init__(f"{path}: {key}: {reason}")


@dataclass(frozen=True)
class Profile:
    """A package's reference: category shares, numeric samples, positive rates."""

    model: str
    version: str
    studies: int
    categorical: dict[str, dict[str, float]]
    numeric: dict[str, list[float]]
    positive_rates: dict[str, float]


@dataclass(frozen=True)
class Window:
    """A model's current window: which jobs it holds, and their series records (newest
    first). The job ids tell one window from the next (`drift_monitor` warns again in
    a window that shares no job with the one it warned in)."""

    jobs: frozenset[int]
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one model: reference, current window, statistic and verdict."""

    model: str
    feature: str
    test: str
    reference: str
    current: str
    statistic: float | None
    p_value: float | None
    status: str  # ok | drift | too_few


def _flatten(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bool]]:
    scores, positives = output_features(record.get("labels", []))
    return {**record.get("inputs", {}), **scores}, positives


def build_profile(model: str, version: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``profile.json`` document of a set of series records (findings records).

    Raises
    ------
    ValueError
        When ``records`` is empty.
    """
    if not records:
        raise ValueError("a profile needs at least one series record")
    flat = [_flatten(r) for r in records]
    categorical = {}
    for name in CATEGORICAL_INPUTS:
        counts = Counter(str(values.get(name)) for values, _ in flat)
        categorical[name] = {k: round(v / len(flat), 6) for k, v in sorted(counts.items())}
    numeric_names = sorted(
        {k for values, _ in flat for k in values if k in NUMERIC_INPUTS or k.startswith("score:")}
    )
    numeric = {
        name: [float(v[name]) for v, _ in flat if v.get(name) is not None] for name in numeric_names
    }
    labels = sorted({label for _, positives in flat for label in positives})
    rates = {
        label: round(sum(p.get(label, False) for _, p in flat) / len(flat), 6) for label in labels
    }
    return {
        "format": PROFILE_FORMAT,
        "model": model,
        "version": version,
        "studies": len(flat),
        "categorical": categorical,
        "numeric": {k: v for k, v in numeric.items() if v},
        "positive_rates": rates,
    }


def read_profile(path: Path, model: str, labels: Sequence[str]) -> Profile:
    """Read a package's ``profile.json`` and check it against the package: its ``model``
    name and ``labels``, and features the node records.

    Raises
    ------
    ProfileError
        When the file is not JSON, lacks a key, names another model, its labels differ
        from the package's, or it holds a feature the node does not record.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(path, "-", f"unreadable: {exc}") from None
    for key in ("model", "version", "studies", "categorical", "numeric", "positive_rates"):
        if key not in document:
            raise ProfileError(path, key, "missing")
    if document.get("format") != PROFILE_FORMAT:
        raise ProfileError(path, "format", f"{document.get('format')!r}, expected {PROFILE_FORMAT}")
    if document["model"] != model:
        raise ProfileError(
            path, "model", f"{document['model']!r} differs from the package's {model!r}"
        )
    profiled = sorted(document["positive_rates"])
    if profiled != sorted(labels):
        raise ProfileError(
            path, "positive_rates", f"labels {profiled} differ from the package's {sorted(labels)}"
        )
    unknown = [
        name
        for name in document["numeric"]
        if name.startswith("score:") and name.removeprefix("score:") not in labels
    ]
    if unknown:
        raise ProfileError(path, "numeric", f"scores of labels not in the package: {unknown}")
    for key, known in (("categorical", CATEGORICAL_INPUTS), ("numeric", NUMERIC_INPUTS)):
        foreign = sorted(
            name for name in document[key] if name not in known and not name.startswith("score:")
        )
        if foreign:
            raise ProfileError(
                path, key, f"features the node does not record: {foreign} (it records {known})"
            )
    return Profile(
        model=str(document["model"]),
        version=str(document["version"]),
        studies=int(document["studies"]),
        categorical=document["categorical"],
        numeric=document["numeric"],
        positive_rates=document["positive_rates"],
    )


def package_profile(package: ModelPackage) -> Profile | None:
    """The package's ``profile.json`` checked against it; ``None`` when it carries none.

    Raises
    ------
    ProfileError
        When the profile does not match the package (see `read_profile`).
    """
    path = package.path / PROFILE_FILE
    if not path.exists():
        return None
    spec = package.spec
    return read_profile(path, spec.model.name, [label.name for label in spec.labels])


def psi(reference: dict[str, float], current: Counter[str]) -> float:
    """Population stability index of the ``current`` counts against ``reference`` shares."""
    total = sum(current.values())
    value = 0.0
    for category in set(reference) | set(current):
        expected = max(reference.get(category, 0.0), PSI_FLOOR)
        actual = max(current.get(category, 0) / total, PSI_FLOOR)
        value += (actual - expected) * math.log(actual / expected)
    return value


def _shares(counts: Counter[str] | dict[str, float], top: int = 3) -> str:
    total = sum(counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v / total:.0%}" for k, v in ranked)


def _median(sample: Sequence[float]) -> str:
    return f"median {float(np.median(sample)):.4g} (n {len(sample)})" if sample else "none"


def current_window(session: Session, model: str, settings: DriftSection, now: datetime) -> Window:
    """``model``'s last ``window_studies`` done jobs within ``window_days`` of ``now``.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    rows = session.execute(
        select(Job.id, Job.findings)
        .where(
            Job.model_name == model,
            Job.state == WorkState.DONE,
            Job.finished_at >= now - timedelta(days=settings.window_days),
        )
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(settings.window_studies)
    ).all()
    return Window(
        frozenset(job_id for job_id, _ in rows),
        [record for _, found in rows for record in (found or {}).get("series", [])],
    )


def compare(
    model: str, profile: Profile, records: Sequence[dict[str, Any]], settings: DriftSection
) -> list[FeatureDrift]:
    """Every feature of the window ``records`` tested against ``profile``."""
    flat = [_flatten(r) for r in records]
    enough = len(flat) >= settings.min_studies
    out = []

    def verdict(drifted: bool) -> str:
        return "too_few" if not enough else ("drift" if drifted else "ok")

    for name, shares in profile.categorical.items():
        counts = Counter(str(values.get(name)) for values, _ in flat)
        value = psi(shares, counts) if flat else None
        out.append(
            FeatureDrift(
                model,
                name,
                "psi",
                _shares(shares),
                _shares(counts),
                None if value is None else round(value, 4),
                None,
                verdict(value is not None and value >= settings.psi_threshold),
            )
        )
    for name, sample in profile.numeric.items():
        current = [float(v[name]) for v, _ in flat if v.get(name) is not None]
        test = stats.ks_2samp(sample, current) if current and sample else None
        p = None if test is None else float(test.pvalue)
        out.append(
            FeatureDrift(
                model,
                name,
                "ks",
                _median(sample),
                _median(current),
                None if test is None else round(float(test.statistic), 4),
                p,
                verdict(p is not None and p < settings.p_value),
            )
        )
    for label, rate in profile.positive_rates.items():
        positives = sum(bool(p.get(label)) for _, p in flat)
        p = float(stats.binomtest(positives, len(flat), rate).pvalue) if flat else None
        out.append(
            FeatureDrift(
                model,
                f"positive_rate:{label}",
                "binomial",
                f"{rate:.1%}",
                f"{positives / len(flat):.1%} ({positives}/{len(flat)})" if flat else "none",
                round(positives / len(flat) - rate, 4) if flat else None,
                p,
                verdict(p is not None and p < settings.p_value),
            )
        )
    return out


def as_rows(drifts: Sequence[FeatureDrift]) -> list[dict[str, Any]]:
    """Plain dicts for JSON."""
    return [asdict(d) for d in drifts]
