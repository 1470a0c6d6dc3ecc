"""Amending a written report: a new version of an SR that adds comments and is PARTIAL.

A report that went out before something it belongs with failed (the later step of a
chained model) is not rewritten in place: the standard's way is a new document in the
same series that names the first as its predecessor (Predecessor Documents Sequence)
and carries what was learnt, here as comments in the report's qualitative
evaluations, with the Completion Flag PARTIAL and the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

from sr_writer.content import ascii_text
from sr_writer.sr import COMMENT, QUALITATIVE_EVALUATIONS

_LO_LENGTH = 64
_SEPARATOR = "\x1f"


def _evaluations(root_items: Sequence[Dataset]) -> Dataset | None:
    for item in root_items:
        names = item.get("ConceptNameCodeSequence", [])
        container = item.get("ValueType") == "CONTAINER"
        if container and names and names[0].CodeValue == QUALITATIVE_EVALUATIONS.value:
            return item
    return None


def amend_report(
    report: Dataset, comments: Sequence[str], *, uid_root: str = PYDICOM_ROOT_UID
) -> Dataset:
    """A new version of ``report`` with ``comments`` added, marked PARTIAL.

    Its SOP Instance UID derives from the report's and the comments, so that amending
    the same report with the same comments again (a retried job) gives the same UID.

    Parameters
    ----------
    report: pydicom.Dataset
        A TID 1500 SR written by `build_results`.
    comments: Sequence[str]
        What the new version adds; the first also becomes the Completion Flag
        Description.
    uid_root: str
        Root of the new SOP Instance UID, ending in ``"."``.

    Returns
    -------
    pydicom.Dataset
        The amended report; ``report`` is left unchanged.

    Raises
    ------
    ValueError
        If ``comments`` is empty or ``report`` is not an SR document.
    """
    if not comments:
        raise ValueError("amend_report needs at least one comment")
    if report.get("Modality") != "SR" or "ContentSequence" not in report:
        raise ValueError(f"not an SR document: {report.get('SOPInstanceUID')}")
    amended = copy.deepcopy(report)
    items = [
        hd.sr.TextContentItem(
            name=COMMENT,
            value=ascii_text(comment),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for comment in comments
    ]
    container = _evaluations(amended.ContentSequence)
    if container is None:
        container = hd.sr.ContainerContentItem(
            name=QUALITATIVE_EVALUATIONS,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        container.ContentSequence = hd.sr.ContentSequence(items)
        amended.ContentSequence.append(container)
    else:
        container.ContentSequence.extend(items)
    predecessor = Dataset()
    predecessor.StudyInstanceUID = report.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = report.SeriesInstanceUID
    reference = Dataset()
    reference.ReferencedSOPClassUID = report.SOPClassUID
    reference.ReferencedSOPInstanceUID = report.SOPInstanceUID
    series.ReferencedSOPSequence = [reference]
    predecessor.ReferencedSeriesSequence = [series]
    amended.PredecessorDocumentsSequence = [predecessor]
    uid = generate_uid(
        prefix=uid_root,
        entropy_srcs=[_SEPARATOR.join([str(report.SOPInstanceUID), "amended", *comments])],
    )
    amended.SOPInstanceUID = UID(uid)
    if getattr(amended, "file_meta", None) is not None:
        amended.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    amended.InstanceNumber = int(report.get("InstanceNumber") or 1) + 1
    now = datetime.now(UTC)
    amended.ContentDate = now.strftime("%Y%m%d")
    amended.ContentTime = now.strftime("%H%M%S")
    amended.CompletionFlag = "PARTIAL"
    amended.CompletionFlagDescription = ascii_text(comments[0])[:_LO_LENGTH]
    return amended
