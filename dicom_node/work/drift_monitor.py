"""Drift in Prometheus and the log, computed from the database at each scrape.

``dicom_node_drift{model,feature}`` is each feature's statistic (PSI, KS distance, or
the positive-rate difference) and ``dicom_node_positive_rate{model,label}`` each
label's positive rate in the current window (`dicom_node.work.drift`). A feature that
starts drifting logs one warning; it warns again only after it has been back to ok,
so that a scrape every few seconds does not repeat it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.db.schema import utcnow
from dicom_node.work.drift import PROFILE_FILE, Profile, compare, read_profile, window_records
from dicom_node.work.drift_features import output_features
from inference import validate_package

logger = logging.getLogger(__name__)


def load_profiles(config: NodeConfig) -> dict[str, Profile]:
    """The profile of every configured model whose package has one, by model name.

    Raises
    ------
    dicom_node.work.drift.ProfileError
        When a profile does not match its package (`model_package_problems` says so first).
    inference.ModelPackageError
        When a package is broken.
    """
    profiles = {}
    for model in config.models:
        path = model.path / PROFILE_FILE
        if path.exists():
            labels = [label.name for label in validate_package(model.path).spec.labels]
            profiles[model.name] = read_profile(path, labels)
    return profiles


class DriftCollector(Collector):
    """The drift gauges of every profiled model, read from the database at each scrape."""

    def __init__(
        self, config: NodeConfig, sessions: sessionmaker[Session], profiles: dict[str, Profile]
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._profiles = profiles
        self._drifting: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[Metric]:
        """The drift statistic per feature and the positive rate per label, per model."""
        drift = GaugeMetricFamily(
            "dicom_node_drift",
            "Drift statistic of a feature vs the profile",
            labels=["model", "feature"],
        )
        rates = GaugeMetricFamily(
            "dicom_node_positive_rate",
            "Positive rate in the drift window",
            labels=["model", "label"],
        )
        settings = self._config.drift
        with self._sessions() as session:
            for model, profile in self._profiles.items():
                records = window_records(session, model, settings, utcnow())
                for row in compare(model, profile, records, settings):
                    if row.statistic is not None:
                        drift.add_metric([model, row.feature], row.statistic)
                    self._warn_once(row.model, row.feature, row.status, row.current)
                positives = [output_features(r.get("labels", []))[1] for r in records]
                for label in profile.positive_rates:
                    if positives:
                        share = sum(p.get(label, False) for p in positives) / len(positives)
                        rates.add_metric([model, label], share)
        yield drift
        yield rates

    def _warn_once(self, model: str, feature: str, status: str, current: str) -> None:
        key = (model, feature)
        if status == "drift" and key not in self._drifting:
            self._drifting.add(key)
            logger.warning(
                "model input or output drifts",
                extra={"model": model, "feature": feature, "current": current},
            )
        elif status == "ok":
            self._drifting.discard(key)
