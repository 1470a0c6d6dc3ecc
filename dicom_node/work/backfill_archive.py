"""The archive a backfill reads from, whatever it speaks: C-FIND with C-GET or C-MOVE
(a DIMSE peer, by its ``retrieve`` key), or QIDO-RS with WADO-RS (a DICOMweb peer).

Each asks for studies and series the same way and brings the instances into the node
through the listener's store path (C-GET, WADO-RS: the C-STORE handler in this process;
C-MOVE: the running listener).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Protocol

from dicom_node.config import DicomwebPeerConfig, NodeConfig, PeerConfig
from dicom_node.net.dicomweb_auth import DicomwebConnector
from dicom_node.net.dicomweb_query import search_series, search_studies
from dicom_node.net.dicomweb_retrieve import retrieve_into
from dicom_node.net.query_retrieve import (
    FoundSeries,
    FoundStudy,
    Retrieval,
    find_series,
    find_studies,
    get_instances,
    move_instances,
)
from dicom_node.net.scp import StoreHandler
from dicom_node.net.scu import LocalAE


def date_range(since: date, until: date | None) -> str:
    """The StudyDate range matching key: ``YYYYMMDD-YYYYMMDD``, or open ``YYYYMMDD-``."""
    end = until.strftime("%Y%m%d") if until else ""
    return f"{since.strftime('%Y%m%d')}-{end}"


class Archive(Protocol):
    """What a backfill needs of an archive.

    ``method`` names the retrieval in reasons and audit lines; ``sender_aet`` is the AE
    title the retrieved instances are recorded as sent by (None over DICOMweb).
    """

    method: str
    sender_aet: str | None

    def find_studies(
        self, since: date, until: date | None, modality: str | None, keywords: Sequence[str]
    ) -> list[FoundStudy]:
        """The studies with a StudyDate from ``since`` to ``until`` (None: today), oldest
        first."""

    def find_series(self, study_uid: str, keywords: Sequence[str]) -> list[FoundSeries]:
        """The series of a study, with ``keywords`` asked besides the counts."""

    def retrieve(self, study: FoundStudy, series_uids: Sequence[str] | None) -> Retrieval:
        """Bring a study (``series_uids`` None) or some of its series into the node."""


class DimseArchive:
    """C-FIND, and C-GET (stored by ``handler``) or C-MOVE (to our own AE title)."""

    def __init__(self, local: LocalAE, peer: PeerConfig, handler: StoreHandler) -> None:
        self.local = local
        self.peer = peer
        self.handler = handler
        self.method = "C-MOVE" if peer.retrieve == "move" else "C-GET"
        self.sender_aet: str | None = peer.ae_title

    def find_studies(
        self, since: date, until: date | None, modality: str | None, keywords: Sequence[str]
    ) -> list[FoundStudy]:
        """C-FIND at study level, one day at a time (archives cap their answers; see
        `dicom_node.net.query_retrieve.find_studies`)."""
        last = until or date.today()
        days = [since + timedelta(days=n) for n in range((last - since).days + 1)]
        keys = [day.strftime("%Y%m%d") for day in days]
        return find_studies(self.local, self.peer, keys, modality, keywords)

    def find_series(self, study_uid: str, keywords: Sequence[str]) -> list[FoundSeries]:
        """C-FIND at series level."""
        return find_series(self.local, self.peer, study_uid, keywords)

    def retrieve(self, study: FoundStudy, series_uids: Sequence[str] | None) -> Retrieval:
        """C-MOVE or C-GET, as the peer's ``retrieve`` says."""
        uid = study.study_instance_uid
        if self.method == "C-MOVE":
            return move_instances(self.local, self.peer, uid, series_uids)
        sop_classes = [c for c in study.values.get("SOPClassesInStudy", "").split("\\") if c]
        return get_instances(self.local, self.peer, self.handler, uid, series_uids, sop_classes)


class DicomwebArchive:
    """QIDO-RS and WADO-RS (stored by ``handler``)."""

    method = "WADO-RS"
    sender_aet: str | None = None

    def __init__(self, peer: DicomwebPeerConfig, handler: StoreHandler) -> None:
        self.connector = DicomwebConnector(peer)
        self.handler = handler

    def find_studies(
        self, since: date, until: date | None, modality: str | None, keywords: Sequence[str]
    ) -> list[FoundStudy]:
        """QIDO-RS ``/studies`` over the range, paged (see
        `dicom_node.net.dicomweb_query.search_studies`)."""
        return search_studies(self.connector, date_range(since, until), modality, keywords)

    def find_series(self, study_uid: str, keywords: Sequence[str]) -> list[FoundSeries]:
        """QIDO-RS ``/studies/{uid}/series``."""
        return search_series(self.connector, study_uid, keywords)

    def retrieve(self, study: FoundStudy, series_uids: Sequence[str] | None) -> Retrieval:
        """WADO-RS of the study or of each series, stored as they stream in."""
        return retrieve_into(self.connector, self.handler, study.study_instance_uid, series_uids)


def open_archive(
    config: NodeConfig, peer: PeerConfig | DicomwebPeerConfig, handler: StoreHandler
) -> Archive:
    """The archive for ``peer``, calling it as the node (our AE title, timeout, TLS)."""
    if isinstance(peer, DicomwebPeerConfig):
        return DicomwebArchive(peer, handler)
    return DimseArchive(LocalAE.from_config(config), peer, handler)
