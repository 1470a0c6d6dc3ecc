"""QIDO-RS: how many instances a DICOMweb peer holds of a study, for completion by counts,
the studies and series it holds, for the backfill (`search_studies`, `search_series`), and
a one-study query that checks the link, for ``dicom-node echo``.

The DICOMweb counterpart of `dicom_node.net.scu.find_study_counts`: per study, one
``GET /studies?StudyInstanceUID=...&includefield=NumberOfStudyRelatedInstances`` and
one ``GET /studies/{uid}/series?includefield=NumberOfSeriesRelatedInstances``. A
study the peer does not know, or whose counts it omits, is left out of the answer, so
the quiet timer decides it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset

from dicom_node.intake.completion import StudyCounts
from dicom_node.net.dicomweb_auth import DicomwebConnector, DicomwebError
from dicom_node.net.query_retrieve import (
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    FoundSeries,
    FoundStudy,
    answered_values,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def dicomweb_call(connector: DicomwebConnector, what: str, call: Callable[[], _T]) -> _T:
    """Run one dicomweb-client call, turning HTTP and network failures into
    :class:`DicomwebError` (with the status and Retry-After when there is an answer).

    Raises
    ------
    DicomwebError
        When the peer does not answer, or answers with an error status.
    """
    peer = connector.peer.name
    try:
        return call()
    except requests.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else None
        raise DicomwebError(peer, f"{what}: HTTP {status}", http_status=status) from None
    except requests.RequestException as exc:
        raise DicomwebError(peer, f"{what}: {type(exc).__name__}: {exc}") from None


def _count(item: dict[str, Any], keyword: str) -> int | None:
    try:
        value = Dataset.from_json(item).get(keyword)
        return int(value) if value not in (None, "") else None
    except (ValueError, TypeError, KeyError):
        return None


def _study_counts(
    connector: DicomwebConnector, client: DICOMwebClient, uid: str
) -> StudyCounts | None:
    studies = dicomweb_call(
        connector,
        "QIDO-RS studies",
        partial(
            client.search_for_studies,
            search_filters={"StudyInstanceUID": uid},
            fields=["NumberOfStudyRelatedInstances"],
        ),
    )
    if not studies:
        return None
    series = dicomweb_call(
        connector,
        "QIDO-RS series",
        partial(
            client.search_for_series,
            study_instance_uid=uid,
            fields=["NumberOfSeriesRelatedInstances"],
        ),
    )
    per_series = {}
    for item in series:
        series_uid = Dataset.from_json(item).get("SeriesInstanceUID")
        number = _count(item, "NumberOfSeriesRelatedInstances")
        if series_uid and number is not None:
            per_series[str(series_uid)] = number
    instances = _count(studies[0], "NumberOfStudyRelatedInstances")
    if instances is None and not per_series:
        # An archive that omits the counts: no evidence, so the quiet timer decides (an
        # expected count of zero would complete the study at once).
        logger.warning("QIDO-RS gave no instance counts", extra={"study_uid": uid})
        return None
    return StudyCounts(instances, per_series)


def find_study_counts(
    connector: DicomwebConnector, study_uids: Sequence[str]
) -> dict[str, StudyCounts]:
    """Instances the peer holds per study and per series, for the studies it knows.

    Raises
    ------
    DicomwebError
        When the peer cannot be asked (no connection, credentials, error status).
    """
    counts: dict[str, StudyCounts] = {}
    with connector.client() as client:
        for uid in study_uids:
            found = _study_counts(connector, client, uid)
            if found is not None:
                counts[uid] = found
    logger.debug("QIDO-RS counts", extra={"peer": connector.peer.name, "studies": len(counts)})
    return counts


def ping(connector: DicomwebConnector) -> int:
    """QIDO-RS ``GET /studies?limit=1``, to check the link (``dicom-node echo``); how many
    studies came back (0 or 1).

    Raises
    ------
    DicomwebError
        When the peer cannot be reached, refuses the credentials or answers an error.
    """
    with connector.client() as client:
        found = dicomweb_call(
            connector, "QIDO-RS studies", partial(client.search_for_studies, limit=1)
        )
    return len(found)


def search_studies(
    connector: DicomwebConnector,
    study_dates: str,
    modality: str | None = None,
    keywords: Sequence[str] = (),
) -> list[FoundStudy]:
    """The studies the peer holds with a StudyDate in ``study_dates`` (a DICOM range), and
    ModalitiesInStudy ``modality`` if given, oldest first; ``keywords`` are asked besides.

    Raises
    ------
    DicomwebError
        When the peer cannot be asked (no connection, credentials, error status).
    """
    filters = {"StudyDate": study_dates, **({"ModalitiesInStudy": modality} if modality else {})}
    fields = [*STUDY_RETURN_KEYS, *keywords]
    with connector.client() as client:
        found = dicomweb_call(
            connector,
            "QIDO-RS studies",
            partial(
                client.search_for_studies, search_filters=filters, fields=fields, get_remaining=True
            ),
        )
    studies = [
        FoundStudy(str(dataset.StudyInstanceUID), answered_values(dataset))
        for dataset in map(Dataset.from_json, found)
        if dataset.get("StudyInstanceUID")
    ]
    return sorted(studies, key=lambda s: (s.values.get("StudyDate", ""), s.study_instance_uid))


def search_series(
    connector: DicomwebConnector, study_uid: str, keywords: Sequence[str] = ()
) -> list[FoundSeries]:
    """The series of ``study_uid`` on the peer, with ``keywords`` asked besides the counts.

    Raises
    ------
    DicomwebError
        When the peer cannot be asked (no connection, credentials, error status).
    """
    with connector.client() as client:
        found = dicomweb_call(
            connector,
            "QIDO-RS series",
            partial(
                client.search_for_series,
                study_instance_uid=study_uid,
                fields=[*SERIES_RETURN_KEYS, *keywords],
                get_remaining=True,
            ),
        )
    return [
        FoundSeries(str(dataset.SeriesInstanceUID), answered_values(dataset))
        for dataset in map(Dataset.from_json, found)
        if dataset.get("SeriesInstanceUID")
    ]
