"""Delivery: C-STORE result objects to their destinations, with retries that survive restarts.

The scheduler runs :meth:`DeliveryScanner.scan` every ``delivery.scan_interval_seconds``.
It claims due deliveries per destination, up to ``delivery.batch_size`` at a time, and
sends each batch over one association (`dicom_node.net.scu.send_files`: the file's own
transfer syntax when the peer accepts it, otherwise Explicit/Implicit VR Little
Endian), or, to a ``kind = "dicomweb"`` peer, by STOW-RS
(`dicom_node.net.dicomweb_sender`, which maps HTTP answers onto the same outcomes).
Each object's outcome is recorded as soon as it is known:

- stored (success or warning status): DONE, or, for a peer with
  ``storage_commitment = true``, WAITING_COMMITMENT until the archive's N-EVENT-REPORT
  (`dicom_node.work.commitment`);
- transient failure (refused or dropped association, timeout, 0xA7xx, HTTP 5xx/429):
  queued again after ``backoff_initial_seconds * 2**(attempts-1)``, capped at
  ``backoff_max_seconds`` (or the peer's Retry-After when later), until ``max_attempts``;
- permanent failure (a failure status for the object itself): queued once more, and
  failed with the status and its meaning if it fails permanently again
  (`dicom_node.net.store_outcome` tells them apart, `dicom_node.work.delivery_queue.next_try`
  decides).

Everything lives in the database, so a restart resumes where the last one stopped;
the deterministic result UIDs make a re-sent object replace, not duplicate, its copy.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.config import DicomwebPeerConfig, NodeConfig, PeerConfig
from dicom_node.db.ownership import owner_id
from dicom_node.db.schema import Delivery, WorkState, utcnow
from dicom_node.metrics import DELIVERIES_SENT, DELIVERY_FAILURES
from dicom_node.net.dicomweb_auth import DicomwebConnector
from dicom_node.net.dicomweb_sender import store_files
from dicom_node.net.scu import AssociationError, FileStatus, LocalAE, send_files
from dicom_node.net.store_outcome import Outcome, StoreResult, transient
from dicom_node.work.commitment import request_commitment
from dicom_node.work.delivery_queue import (
    ClaimedDelivery,
    awaiting_commitment,
    claim_batch,
    due_peers,
    fail_waiting,
    next_try,
    reclaim_abandoned_deliveries,
    record_outcome,
    renew_leases,
)

logger = logging.getLogger(__name__)


class DeliveryScanner:
    """Sends due deliveries; one scanner per process that has the worker role.

    Parameters
    ----------
    config
        The node config (peers, ``delivery``, ``worker.lease_seconds``).
    sessions
        Database sessions.
    local
        Our AE title, timeout and TLS material for associations.
    """

    def __init__(self, config: NodeConfig, sessions: sessionmaker[Session], local: LocalAE):
        self.config = config
        self.sessions = sessions
        self.local = local
        self._connectors: dict[str, DicomwebConnector] = {}

    @property
    def lease_seconds(self) -> float:
        # Renewed after every object (see _record); one object may take a full timeout.
        """How long a claimed batch stays ours without a renewal."""
        return self.config.worker.lease_seconds + 3 * self.config.delivery.timeout_seconds

    def scan(self) -> int:
        """Reclaim deliveries of dead senders, expire stale commitments, send what is due.

        Returns how many objects were stored.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database fails (the scheduler logs it and runs the next scan).
        """
        reclaim_abandoned_deliveries(self.sessions)
        self.expire_commitments()
        stored = 0
        sender = owner_id("delivery")
        for peer_name in due_peers(self.sessions):
            while batch := claim_batch(
                self.sessions,
                peer_name,
                sender,
                self.config.delivery.batch_size,
                self.lease_seconds,
            ):
                sent, reachable = self.send_batch(peer_name, batch)
                stored += sent
                if not reachable or len(batch) < self.config.delivery.batch_size:
                    break
        return stored

    def send_batch(self, peer_name: str, batch: list[ClaimedDelivery]) -> tuple[int, bool]:
        """Send one claimed batch (over one association, or by STOW-RS to a DICOMweb
        peer) and record every outcome.

        Returns (objects stored, whether the peer was reachable). Network failures are
        outcomes recorded on the rows, not exceptions.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database fails while recording; unrecorded objects stay RUNNING
            and are requeued when their lease expires.
        """
        try:
            peer = self.config.peer(peer_name)
        except KeyError as exc:
            result = StoreResult(Outcome.PERMANENT, None, str(exc.args[0]))
            with self.sessions.begin() as session:
                for item in batch:
                    record_outcome(session, item, WorkState.FAILED, status=None, error=result.error)
            return 0, False
        by_path = {Path(item.path): item for item in batch}
        storage_commitment = isinstance(peer, PeerConfig) and peer.storage_commitment
        transaction_uid = generate_uid() if storage_commitment else None
        committed: list[ClaimedDelivery] = []
        reachable = True

        def record(path: Path, result: StoreResult) -> None:
            nonlocal reachable
            item = by_path[path]
            if result.outcome is Outcome.TRANSIENT and result.status is None:
                reachable = False  # no answer at all (FailureKind.NETWORK, no HTTP answer)
            if self._record(item, result, peer, transaction_uid) and (
                result.outcome is Outcome.STORED
            ):
                committed.append(item)

        if isinstance(peer, DicomwebPeerConfig):
            store_files(self._connector(peer), list(by_path), record)
            return len(committed), reachable

        def progress(status: FileStatus) -> None:
            record(status.path, status.result)

        send_files(self.local, peer, list(by_path), progress=progress)
        if committed and transaction_uid:
            self._request_commitment(peer, committed, transaction_uid)
        return len(committed), reachable

    def _connector(self, peer: DicomwebPeerConfig) -> DicomwebConnector:
        """One connector per DICOMweb peer, kept so that its bearer token is cached."""
        connector = self._connectors.get(peer.name)
        if connector is None:
            connector = self._connectors[peer.name] = DicomwebConnector(peer)
        return connector

    def _record(
        self,
        item: ClaimedDelivery,
        result: StoreResult,
        peer: PeerConfig | DicomwebPeerConfig,
        transaction_uid: str | None,
    ) -> bool:
        log = {"delivery_id": item.id, "peer": peer.name, "sop_uid": item.sop_instance_uid}
        now = utcnow()
        with self.sessions.begin() as session:
            # A slow peer must not let the rest of the batch look abandoned.
            renew_leases(session, item.worker_id, self.lease_seconds)
            if result.outcome is Outcome.STORED:
                state = WorkState.WAITING_COMMITMENT if transaction_uid else WorkState.DONE
                # While waiting for commitment, next_attempt_at is the report's deadline.
                timeout = timedelta(seconds=self.config.delivery.commitment_timeout_seconds)
                retry_at = now + timeout if transaction_uid else None
                ok = record_outcome(
                    session,
                    item,
                    state,
                    status=result.status,
                    error=None,
                    retry_at=retry_at,
                    commitment_uid=transaction_uid,
                )
                if ok:
                    DELIVERIES_SENT.labels(peer=peer.name).inc()
                    logger.info("result delivered", extra={**log, "state": str(state)})
                    _audit_delivery(item, peer, result, state, transaction_uid)
                return ok
            after = next_try(
                result, item.attempts, item.permanent_failures, self.config.delivery, now
            )
            state, retry_at = after.state, after.retry_at
            ok = record_outcome(
                session,
                item,
                state,
                status=result.status,
                error=result.error,
                retry_at=retry_at,
                permanent_failures=after.permanent_failures,
            )
        DELIVERY_FAILURES.labels(peer=peer.name, kind=str(result.outcome)).inc()
        _audit_delivery(item, peer, result, state, None)
        logger.warning(
            "delivery failed" if state is WorkState.FAILED else "delivery will be retried",
            extra={**log, "error": result.error, "attempt": item.attempts, "retry_at": retry_at},
        )
        return ok

    def _request_commitment(
        self, peer: PeerConfig, items: list[ClaimedDelivery], transaction_uid: str
    ) -> None:
        try:
            request_commitment(
                self.local,
                peer,
                [(item.sop_class_uid, item.sop_instance_uid) for item in items],
                transaction_uid,
            )
        except AssociationError as exc:
            result = transient(f"storage commitment request failed: {exc.reason}")
            self._requeue_uncommitted(transaction_uid, result)

    def _requeue_uncommitted(self, transaction_uid: str, result: StoreResult) -> None:
        """Put objects whose commitment was refused or timed out back in the queue."""
        now = utcnow()
        with self.sessions.begin() as session:
            for row in awaiting_commitment(session, transaction_uid):
                fail_waiting(row, result, self.config.delivery, now)
        logger.warning(
            "storage commitment not obtained",
            extra={"transaction_uid": transaction_uid, "error": result.error},
        )

    def expire_commitments(self) -> int:
        """Re-queue deliveries whose commitment report did not come in time; how many.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database fails.
        """
        with self.sessions() as session:
            stale = session.execute(
                select(Delivery.commitment_transaction_uid, func.count())
                .where(
                    Delivery.state == WorkState.WAITING_COMMITMENT,
                    Delivery.next_attempt_at <= utcnow(),
                )
                .group_by(Delivery.commitment_transaction_uid)
            ).all()
        timeout = self.config.delivery.commitment_timeout_seconds
        for uid, _ in stale:
            if uid is not None:
                self._requeue_uncommitted(uid, transient(f"no commitment report in {timeout:g} s"))
        return sum(count for _, count in stale)


def _audit_delivery(
    item: ClaimedDelivery,
    peer: PeerConfig | DicomwebPeerConfig,
    result: StoreResult,
    state: WorkState,
    transaction_uid: str | None,
) -> None:
    """The audit line of one delivery attempt: where, what came of it, commitment asked."""
    audit(
        AuditEvent.DELIVERY,
        result_sop_uid=item.sop_instance_uid,
        delivery_id=item.id,
        destination=peer.name,
        destination_aet=peer.ae_title if isinstance(peer, PeerConfig) else None,
        destination_url=peer.url if isinstance(peer, DicomwebPeerConfig) else None,
        outcome=str(result.outcome),
        status=result.status,
        state=str(state),
        attempt=item.attempts,
        commitment_requested=transaction_uid,
        error=result.error,
    )
