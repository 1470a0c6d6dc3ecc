"""Removing what an association leaves half-received when it ends.

pynetdicom streams each C-STORE data set into a temp file in the spool's ``incoming/``
folder and removes it once the handler has answered. An association that ends in the
middle of a transfer (an abort, a dropped connection, a PDU refused) leaves that file
behind, and one whose last message arrived but was never answered leaves that one: both
are removed here, once the association's threads have ended. No sender was answered
Success for either, so the sender sends them again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pynetdicom.association import Association

from dicom_node.net.pynetdicom_internals import unfinished_transfer_files

logger = logging.getLogger(__name__)


def discard_unfinished_transfers(assoc: Association) -> int:
    """Close and delete the temp files of transfers ``assoc`` did not complete; their
    total size in bytes. Call only once the association and its DUL have stopped."""
    removed = 0
    for handle in unfinished_transfer_files(assoc):
        path = Path(handle.name)
        try:
            handle.close()
            removed += path.stat().st_size
            path.unlink()
        except OSError as exc:
            logger.error("cannot remove an unfinished transfer", extra={"path": path, "error": exc})
    if removed:
        logger.info(
            "unfinished transfer removed",
            extra={"bytes": removed, "client": assoc.requestor.address},
        )
    return removed
