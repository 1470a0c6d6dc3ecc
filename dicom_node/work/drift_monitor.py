"""Drift in Prometheus and the log, computed from the database at each scrape.

``dicom_node_drift{model,feature}`` is each feature's statistic (PSI, KS distance, or
the positive-rate difference) and ``dicom_node_positive_rate{model,label}`` each
label's positive rate in the current window (`dicom_node.work.drift`).

A drifting feature logs one warning per window, so that a scrape every few seconds
does not repeat it, yet a drift that lasts is not said only once in the process's
life: it warns again once the window has turned over, i.e. shares no job with the
window it warned in (after ``window_studies`` new studies, or once ``window_days``
have passed and the old jobs have left it), and whenever it drifts again after
having been back to ok.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.db.schema import utcnow
from dicom_node.work.drift import (
    FeatureDrift,
    Profile,
    Window,
    compare,
    current_window,
    package_profile,
)
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
        profile = package_profile(validate_package(model.path))
        if profile is not None:
            profiles[model.name] = profile
    return profiles


class DriftCollector(Collector):
    """The drift gauges of every profiled model, read from the database at each scrape.

    ``clock`` gives the current time (the database's UTC clock by default).
    """

    def __init__(
        self,
        config: NodeConfig,
        sessions: sessionmaker[Session],
        profiles: dict[str, Profile],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._profiles = profiles
        self._clock = clock
        self._warned: dict[tuple[str, str], frozenset[int]] = {}  # the window's jobs

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
        now = self._clock()
        with self._sessions() as session:
            for model, profile in self._profiles.items():
                window = current_window(session, model, settings, now)
                for row in compare(model, profile, window.records, settings):
                    if row.statistic is not None:
                        drift.add_metric([model, row.feature], row.statistic)
                    self._warn_once(row, window)
                positives = [output_features(r.get("labels", []))[1] for r in window.records]
                for label in profile.positive_rates:
                    if positives:
                        share = sum(p.get(label, False) for p in positives) / len(positives)
                        rates.add_metric([model, label], share)
        yield drift
        yield rates

    def _warn_once(self, row: FeatureDrift, window: Window) -> None:
        """Warn about a drifting feature once per window; forget it once it is ok."""
        key = (row.model, row.feature)
        if row.status == "ok":
            self._warned.pop(key, None)
        if row.status != "drift":
            return  # too few studies to judge: neither a new drift nor a recovery
        warned_in = self._warned.get(key)
        if warned_in is not None and not warned_in.isdisjoint(window.jobs):
            return
        self._warned[key] = window.jobs
        logger.warning(
            "model input or output drifts",
            extra={
                "model": row.model,
                "feature": row.feature,
                "test": row.test,
                "statistic": row.statistic,
                "p_value": row.p_value,
                "reference": row.reference,
                "current": row.current,
                "studies": len(window.jobs),
            },
        )
