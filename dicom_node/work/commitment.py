"""Storage Commitment (Push Model): ask the archive to take responsibility for our results.

For a peer with ``storage_commitment = true``, delivery sends the batch, marks each
stored object WAITING_COMMITMENT under one Transaction UID, then sends an N-ACTION
(Request Storage Commitment) listing them. The archive answers later with an
N-EVENT-REPORT on a NEW association to the node's own listener (Orthanc does so), which
:class:`CommitmentReportHandler` handles: objects in the Referenced SOP Sequence are
DONE; objects in the Failed SOP Sequence go back to the queue with the failure reason
(a permanent failure: retried once, then failed). Objects with no report by
``delivery.commitment_timeout_seconds`` are re-sent and asked for again.
:class:`CommitmentReports` binds the handler to the running listener.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DeliverySection, PeerConfig
from dicom_node.db.schema import WorkState, utcnow
from dicom_node.net.scp import Listener
from dicom_node.net.scu import AssociationError, LocalAE, open_association
from dicom_node.net.store_outcome import Outcome, StoreResult
from dicom_node.work.delivery_queue import awaiting_commitment, fail_waiting

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = UID("1.2.840.10008.1.20.1")
# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
REQUEST_COMMITMENT_ACTION = 1
ALL_COMMITTED_EVENT = 1
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110


def commitment_request(items: Sequence[tuple[str, str]], transaction_uid: str) -> Dataset:
    """The N-ACTION information: the Transaction UID and (SOP class, SOP instance) pairs."""
    request = Dataset()
    request.TransactionUID = transaction_uid
    references = []
    for sop_class, sop_instance in items:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        references.append(item)
    request.ReferencedSOPSequence = references
    return request


def request_commitment(
    local: LocalAE, peer: PeerConfig, items: Sequence[tuple[str, str]], transaction_uid: str
) -> None:
    """Send the N-ACTION asking ``peer`` to commit ``items`` under ``transaction_uid``.

    Raises
    ------
    AssociationError
        When there is no association, the peer does not support Storage Commitment, or
        it answers the N-ACTION with a failure status (the reason names it).
    """
    context = build_context(STORAGE_COMMITMENT_PUSH_MODEL)
    with open_association(local, peer, [context]) as assoc:
        if not assoc.accepted_contexts:
            raise AssociationError(peer, "Storage Commitment Push Model not accepted")
        status, _reply = assoc.send_n_action(
            commitment_request(items, transaction_uid),
            REQUEST_COMMITMENT_ACTION,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_INSTANCE,
        )
    code = int(status.get("Status", -1)) if status else -1
    if code != SUCCESS:
        shown = "no response" if code < 0 else f"status 0x{code:04X}"
        raise AssociationError(peer, f"N-ACTION (storage commitment) failed: {shown}")
    logger.info(
        "storage commitment requested",
        extra={"peer": peer.name, "transaction_uid": transaction_uid, "objects": len(items)},
    )


def _uids(dataset: Dataset, keyword: str) -> dict[str, int | None]:
    """SOP Instance UID -> Failure Reason (None in the success sequence)."""
    return {
        str(item.ReferencedSOPInstanceUID): (
            int(item.FailureReason) if "FailureReason" in item else None
        )
        for item in dataset.get(keyword, [])
        if "ReferencedSOPInstanceUID" in item
    }


class CommitmentReportHandler:
    """The listener's EVT_N_EVENT_REPORT handler: ``handler(event) -> (status, None)``.

    Never raises: a report it cannot apply is answered 0x0110 and logged.

    Parameters
    ----------
    sessions
        Database sessions.
    settings
        The ``[delivery]`` section (backoff for objects the archive failed to commit).
    """

    def __init__(self, sessions: sessionmaker[Session], settings: DeliverySection) -> None:
        self.sessions = sessions
        self.settings = settings

    def __call__(self, event: Event) -> tuple[int, Dataset | None]:
        try:
            info = event.event_information
            self.apply(
                str(info.TransactionUID),
                _uids(info, "ReferencedSOPSequence"),
                _uids(info, "FailedSOPSequence"),
            )
        except Exception:
            logger.exception("storage commitment report not applied")
            return PROCESSING_FAILURE, None
        return SUCCESS, None

    def apply(
        self, transaction_uid: str, committed: dict[str, int | None], failed: dict[str, int | None]
    ) -> tuple[int, int]:
        """Mark committed objects DONE and re-queue failed ones; returns both counts.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database fails.
        """
        now = utcnow()
        done = requeued = 0
        with self.sessions.begin() as session:
            for row in awaiting_commitment(session, transaction_uid):
                uid = row.sop_instance_uid
                if uid in committed:
                    row.state, row.error = WorkState.DONE, None
                    done += 1
                elif uid in failed:
                    reason = failed[uid]
                    code = PROCESSING_FAILURE if reason is None else reason
                    result = StoreResult(
                        Outcome.PERMANENT, code, f"archive did not commit (reason 0x{code:04X})"
                    )
                    fail_waiting(row, result, self.settings, now)
                    requeued += 1
        logger.info(
            "storage commitment report",
            extra={"transaction_uid": transaction_uid, "committed": done, "failed": requeued},
        )
        return done, requeued


class CommitmentReports:
    """Binds the storage commitment report handler to the running listener (a service
    component, started after the listener).

    Orthanc (and other archives) send the N-EVENT-REPORT on a new association to the
    node's own port, proposing the Storage Commitment Push Model with themselves as
    SCP: the listener's AE accepts that context in either role, and this component
    routes EVT_N_EVENT_REPORT to the handler.

    Parameters
    ----------
    listener
        The process's listener, not started yet.
    handler
        What applies each report.
    """

    def __init__(self, listener: Listener, handler: CommitmentReportHandler) -> None:
        self.listener = listener
        self.handler = handler
        listener.ae.add_supported_context(
            STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True
        )

    def start(self) -> None:
        """Route N-EVENT-REPORTs on the running listener to the handler.

        Raises
        ------
        RuntimeError
            When the listener has not been started first (a wiring error).
        """
        if self.listener.server is None:
            raise RuntimeError("the listener must start before storage commitment reports")
        self.listener.server.bind(evt.EVT_N_EVENT_REPORT, self.handler)

    def stop(self) -> None:
        """Nothing to release: the handler goes with the listener's server."""
