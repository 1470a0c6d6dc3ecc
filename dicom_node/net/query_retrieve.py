"""Query/Retrieve as an SCU: C-FIND studies and series, C-GET or C-MOVE them into the node.

The backfill (`dicom_node.work.backfill`) asks the archive what it holds in a date range
(study level, then series level), and fetches what the routes want:

- C-GET: the archive sends the instances back on our own association (C-STORE
  sub-operations); they are stored by the listener's own handler
  (:class:`~dicom_node.net.scp.StoreHandler`): streamed into the spool's ``incoming/``,
  fsynced, renamed, catalogued, answered Success only then. No listener needs to run.
- C-MOVE: the archive opens an association to the node's listener (which must be
  running, and known to the archive by AE title, host and port) and stores there.

A peer that refuses (a failure status, or an association closed on the request, which is
how Orthanc refuses an AE title it does not know) raises :class:`QueryRetrieveError` with
the status in hex and what to configure on the archive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000,
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from dicom_node.config import PeerConfig
from dicom_node.errors import PeerError
from dicom_node.net.scp import StoreHandler
from dicom_node.net.scu import (
    MAX_CONTEXTS,
    STUDY_ROOT_FIND,
    AssociationError,
    LocalAE,
    open_association,
)
from dicom_node.net.transfer_cleanup import discard_unfinished_transfers

logger = logging.getLogger(__name__)

STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
# Where an archive sends in a compressed syntax, keep it as it is (the listener does too).
_TRANSFER_SYNTAXES: list[str | UID] = [
    ExplicitVRLittleEndian,
    *(ts for ts in AllTransferSyntaxes if ts != ExplicitVRLittleEndian),
]
# The compressed encodings archives commonly keep instances in: offered one context each
# for the study's own SOP classes, so that a C-GET brings them back as the archive holds them.
ARCHIVE_ENCODINGS = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
)
# How archives end a C-FIND answer they cut short at their result limit: Cancel
# (Orthanc's LimitFindResults) or Refused: Out of Resources.
_CUT_SHORT = frozenset({0xFE00, 0xA700})
# Study-level return keys besides the ones asked for matching.
STUDY_RETURN_KEYS = (
    "StudyDate",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RETURN_KEYS = ("Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")


def _archive_advice(operation: str, local: LocalAE, peer: PeerConfig) -> str:
    aet = local.ae_title
    if operation == "C-FIND":
        return (
            f"allow C-FIND from AE title {aet!r} on the archive {peer.ae_title!r} (Orthanc: "
            f"list the node in DicomModalities with AllowFind)"
        )
    if operation == "C-GET":
        return (
            f"allow C-GET from AE title {aet!r} on the archive (Orthanc: list the node in "
            f'DicomModalities with AllowGet), or set retrieve = "move" on peer {peer.name!r}'
        )
    return (
        f"let the archive move to AE title {aet!r} at this node's host and listener port "
        f"(Orthanc: list the node in DicomModalities with AllowMove), keep the node's "
        f"listener running (dicom-node serve) with {peer.ae_title!r} in "
        f'security.allowed_calling_aets, or set retrieve = "get" on peer {peer.name!r}'
    )


class QueryRetrieveError(PeerError):
    """The archive refused a C-FIND, C-GET or C-MOVE.

    ``status`` is its DIMSE status, or None when it closed the association instead of
    answering; ``advice`` says what to configure on the archive.
    """

    def __init__(
        self, operation: str, peer: PeerConfig, status: int | None, detail: str, advice: str
    ) -> None:
        self.operation = operation
        self.status = status
        self.advice = advice
        shown = "no status" if status is None else f"status 0x{status:04X}"
        reason = f"{operation} refused by {peer.name} ({peer.ae_title}): {shown} ({detail})"
        super().__init__(f"{reason}; {advice}", reason)


@dataclass(frozen=True)
class FoundStudy:
    """A study the archive holds, with the study-level values it answered."""

    study_instance_uid: str
    values: dict[str, str]

    def count(self, keyword: str) -> int | None:
        """An ``IS`` count the archive answered (``NumberOf...``), or None."""
        return _as_int(self.values.get(keyword))


@dataclass(frozen=True)
class FoundSeries:
    """A series of a study, with the series-level values the archive answered."""

    series_instance_uid: str
    values: dict[str, str]

    @property
    def instances(self) -> int | None:
        """NumberOfSeriesRelatedInstances, when the archive answered it."""
        return _as_int(self.values.get("NumberOfSeriesRelatedInstances"))


@dataclass
class Retrieval:
    """What a C-GET or C-MOVE of some series came to, from the archive's final responses.

    ``failed_uids`` are the SOP Instance UIDs the archive reported as failed
    (FailedSOPInstanceUIDList), when it reports them.
    """

    completed: int = 0
    failed: int = 0
    warning: int = 0
    statuses: list[int] = field(default_factory=list)
    failed_uids: list[str] = field(default_factory=list)


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def answered_values(identifier: Dataset) -> dict[str, str]:
    """The non-empty values of a C-FIND (or QIDO-RS) answer, as text by keyword."""
    return {
        element.keyword: text
        for element in identifier
        if element.keyword and (text := _text(element.value).strip())
    }


def _responses(
    operation: str,
    peer: PeerConfig,
    advice: str,
    answers: Iterator[tuple[Dataset, Dataset | None]],
) -> Iterator[tuple[int, Dataset | None, Dataset]]:
    """``(status, identifier, status dataset)`` per response; a refusal raises.

    No status at all is a refusal when it is the archive's first answer (Orthanc closes
    the association on a request it does not allow), and a lost association after that.

    Raises
    ------
    QueryRetrieveError
        When the archive refuses the request.
    AssociationError
        When the association is lost part-way.
    """
    for answered, (status, identifier) in enumerate(answers):
        if "Status" not in status and answered:
            raise AssociationError(peer, f"association lost during {operation}")
        if "Status" not in status:
            raise QueryRetrieveError(
                operation, peer, None, "the archive closed the association on the request", advice
            )
        code = int(status.Status)
        # A failure that counts failed sub-operations is the C-STOREs failing (on our
        # side, say a full disk), not the archive refusing: the caller tallies it.
        sub_operations_failed = int(status.get("NumberOfFailedSuboperations") or 0) > 0
        if code_to_category(code) in ("Failure", "Cancel") and not sub_operations_failed:
            comment = str(status.get("ErrorComment", "")) or code_to_category(code)
            raise QueryRetrieveError(operation, peer, code, comment, advice)
        yield code, identifier, status


@contextmanager
def _associate(
    local: LocalAE,
    peer: PeerConfig,
    operation: str,
    contexts: Sequence[PresentationContext],
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[tuple[Any, Any]] | None = None,
) -> Iterator[Association]:
    """``open_association`` with a rejection told as the operation's refusal; aborted
    (not released) when the block fails or is interrupted, so that nobody waits for the
    archive to finish the sub-operations in flight."""
    try:
        with open_association(local, peer, contexts, ext_neg, evt_handlers) as assoc:
            try:
                yield assoc
            except BaseException:
                assoc.abort()
                raise
    except AssociationError as exc:
        if exc.reason in ("rejected", "aborted") or exc.no_context:
            raise QueryRetrieveError(
                operation, peer, None, exc.reason, _archive_advice(operation, local, peer)
            ) from exc
        raise


def _find(assoc: Association, local: LocalAE, peer: PeerConfig, query: Dataset) -> list[Dataset]:
    advice = _archive_advice("C-FIND", local, peer)
    matches: list[Dataset] = []
    try:
        for code, identifier, _ in _responses(
            "C-FIND", peer, advice, assoc.send_c_find(query, STUDY_ROOT_FIND)
        ):
            if code in (0xFF00, 0xFF01) and identifier is not None:
                matches.append(identifier)
    except QueryRetrieveError as exc:
        if exc.status not in _CUT_SHORT:
            raise
        raise QueryRetrieveError(
            "C-FIND",
            peer,
            exc.status,
            f"the answer was cut short after {len(matches)} match(es)",
            "the archive limits how many matches one C-FIND returns (Orthanc: "
            "LimitFindResults; dcm4chee: QueryMaxNumberOfResults): raise the limit there, "
            "or narrow the query with --modality",
        ) from exc
    return matches


def find_studies(
    local: LocalAE,
    peer: PeerConfig,
    study_dates: Sequence[str],
    modality: str | None = None,
    keywords: Sequence[str] = (),
) -> list[FoundStudy]:
    """The studies ``peer`` holds with a StudyDate matching one of ``study_dates`` (DICOM
    dates or ranges: one C-FIND each, in one association, so that an archive that caps
    its answers is asked for one day at a time), and ModalitiesInStudy ``modality`` if
    given; oldest first.

    ``keywords`` are study-level attributes asked besides (for route matching).

    Raises
    ------
    QueryRetrieveError
        When the archive refuses the association or a C-FIND, or cuts an answer short.
    AssociationError
        When it cannot be reached.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for keyword in (*STUDY_RETURN_KEYS, *keywords):
        setattr(query, keyword, "")
    if modality:
        query.ModalitiesInStudy = modality
    studies: dict[str, FoundStudy] = {}
    with _associate(local, peer, "C-FIND", [build_context(STUDY_ROOT_FIND)]) as assoc:
        for dates in study_dates:
            query.StudyDate = dates
            for identifier in _find(assoc, local, peer, query):
                uid = str(identifier.get("StudyInstanceUID", ""))
                if uid:
                    studies[uid] = FoundStudy(uid, answered_values(identifier))
    return sorted(
        studies.values(), key=lambda s: (s.values.get("StudyDate", ""), s.study_instance_uid)
    )


def find_series(
    local: LocalAE, peer: PeerConfig, study_uid: str, keywords: Sequence[str] = ()
) -> list[FoundSeries]:
    """The series of ``study_uid`` on ``peer``, with ``keywords`` asked besides the counts.

    Raises
    ------
    QueryRetrieveError
        When the archive refuses the association or the C-FIND.
    AssociationError
        When it cannot be reached.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    for keyword in (*SERIES_RETURN_KEYS, *keywords):
        if keyword not in ("StudyInstanceUID", "SeriesInstanceUID"):
            setattr(query, keyword, "")
    with _associate(local, peer, "C-FIND", [build_context(STUDY_ROOT_FIND)]) as assoc:
        found = _find(assoc, local, peer, query)
    return [
        FoundSeries(str(identifier.SeriesInstanceUID), answered_values(identifier))
        for identifier in found
        if identifier.get("SeriesInstanceUID")
    ]


def _identifiers(study_uid: str, series_uids: Sequence[str] | None) -> list[Dataset]:
    """One STUDY-level identifier, or one SERIES-level identifier per series."""
    if series_uids is None:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return [identifier]
    identifiers = []
    for series_uid in series_uids:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        identifiers.append(identifier)
    return identifiers


def _tally(retrieval: Retrieval, code: int, status: Dataset, identifier: Dataset | None) -> None:
    """Add a final response's sub-operation counts to ``retrieval``."""
    retrieval.statuses.append(code)
    retrieval.completed += int(status.get("NumberOfCompletedSuboperations") or 0)
    retrieval.failed += int(status.get("NumberOfFailedSuboperations") or 0)
    retrieval.warning += int(status.get("NumberOfWarningSuboperations") or 0)
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        retrieval.failed_uids.extend(_text(identifier.FailedSOPInstanceUIDList).split("\\"))


def _get_contexts(sop_classes: Sequence[str]) -> tuple[list[PresentationContext], list[Any]]:
    """The C-GET context, and storage contexts with the SCP role: for each of the study's
    own SOP classes one per encoding an archive may hold (it sends each instance in a
    context accepted with the instance's own transfer syntax when there is one, and
    otherwise transcodes it, which it may fail to do: Orthanc answers 0xC000 for some
    JPEG), then the common SOP classes in one context each, up to the 128 contexts an
    association may carry."""
    contexts = [build_context(STUDY_ROOT_GET)]
    uids: list[str] = []
    per_class = 1 + len(ARCHIVE_ENCODINGS)
    for uid in dict.fromkeys(sop_classes):
        if len(contexts) + per_class > MAX_CONTEXTS:
            break
        uids.append(uid)
        contexts.append(build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        contexts += [build_context(uid, encoding) for encoding in ARCHIVE_ENCODINGS]
    for context in StoragePresentationContexts:
        uid = str(context.abstract_syntax)
        if len(contexts) >= MAX_CONTEXTS:
            break
        if uid not in uids:
            uids.append(uid)
            contexts.append(build_context(uid, _TRANSFER_SYNTAXES))
    roles: list[Any] = [build_role(uid, scp_role=True) for uid in uids]
    return contexts, roles


def get_instances(
    local: LocalAE,
    peer: PeerConfig,
    handler: StoreHandler,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    sop_classes: Sequence[str] = (),
) -> Retrieval:
    """C-GET a whole study (``series_uids`` None) or some of its series, in one
    association; every instance goes through ``handler`` as a C-STORE to the listener
    would (spool, fsync, catalog row, then Success to the archive).

    ``sop_classes`` (SOPClassesInStudy) are proposed first, so that a study of rare SOP
    classes still fits in the association's 128 presentation contexts.

    Raises
    ------
    QueryRetrieveError
        When the archive refuses the association or the C-GET.
    AssociationError
        When it cannot be reached, or the association drops.
    """
    contexts, roles = _get_contexts(sop_classes)
    retrieval = Retrieval()
    advice = _archive_advice("C-GET", local, peer)
    handlers = [(evt.EVT_C_STORE, handler)]
    opened: list[Association] = []
    with handler.space.installed():
        try:
            with _associate(local, peer, "C-GET", contexts, roles, handlers) as assoc:
                opened.append(assoc)
                for message_id, identifier in enumerate(_identifiers(study_uid, series_uids), 1):
                    answers = assoc.send_c_get(identifier, STUDY_ROOT_GET, msg_id=message_id)
                    for code, answered, status in _responses("C-GET", peer, advice, answers):
                        if code_to_category(code) != "Pending":
                            _tally(retrieval, code, status, answered)
                    if not assoc.is_established:
                        raise AssociationError(peer, "association lost during C-GET")
        finally:
            for assoc in opened:  # released or aborted by now: what it left half-received
                assoc.dul.join(timeout=5.0)
                discard_unfinished_transfers(assoc)
                handler.reception.ended(assoc)
    return retrieval


def move_instances(
    local: LocalAE,
    peer: PeerConfig,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
) -> Retrieval:
    """C-MOVE a whole study (``series_uids`` None) or some of its series to our own AE
    title: the archive stores them through the node's running listener.

    Raises
    ------
    QueryRetrieveError
        When the archive refuses the association or the C-MOVE (destination unknown).
    AssociationError
        When it cannot be reached, or the association drops.
    """
    retrieval = Retrieval()
    advice = _archive_advice("C-MOVE", local, peer)
    with _associate(local, peer, "C-MOVE", [build_context(STUDY_ROOT_MOVE)]) as assoc:
        for message_id, identifier in enumerate(_identifiers(study_uid, series_uids), 1):
            answers = assoc.send_c_move(
                identifier, local.ae_title, STUDY_ROOT_MOVE, msg_id=message_id
            )
            for code, answered, status in _responses("C-MOVE", peer, advice, answers):
                if code_to_category(code) != "Pending":
                    _tally(retrieval, code, status, answered)
            if not assoc.is_established:
                raise AssociationError(peer, "association lost during C-MOVE")
    return retrieval
