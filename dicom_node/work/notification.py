"""Result notifications: tell a webhook or a FHIR server that a job's results are in the
archive, exactly once per announcement, in order per study, retried like deliveries.

The scheduler runs :meth:`NotificationScanner.scan` every ``delivery.scan_interval_seconds``
(worker role, when ``[[notifications]]`` are configured). It claims the notifications
that are due and ready (`dicom_node.work.notification_queue`: the job's deliveries are
done, committed where the peer commits, and no earlier one of the study to the same
target is pending), builds each document from the database
(`dicom_node.work.notification_document`) and sends it:

- ``kind = "webhook"``: one POST of the JSON document, with ``Idempotency-Key`` (the
  same on every try) and, when a secret is set, ``<signature_header>: sha256=<HMAC of
  the body>``;
- ``kind = "fhir"``: a transaction Bundle to the base URL, or each Observation and then
  the DiagnosticReport to their endpoints, conditional creates all
  (`dicom_node.work.fhir_report`).

A 2xx answer makes it DONE. Other answers follow the deliveries' rules and backoff
(``[delivery]`` max_attempts, backoff_initial_seconds, backoff_max_seconds): 5xx, 408,
425, 429 and no connection are transient, other 4xx permanent (retried once). A job
whose deliveries ended FAILED announces nothing: its notification fails with the
delivery ids, and ``dicom-node retry`` re-sends both. Every try leaves an audit line.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.config import NodeConfig, NotificationBase
from dicom_node.db import leases
from dicom_node.db.ownership import owner_id
from dicom_node.db.schema import Notification, Study, WorkState, utcnow
from dicom_node.net.dicomweb_auth import DicomwebConnector, DicomwebError
from dicom_node.net.http_post import PostResult
from dicom_node.net.store_outcome import Outcome, StoreResult, transient
from dicom_node.work.delivery_queue import next_try
from dicom_node.work.notification_document import notification_document
from dicom_node.work.notification_queue import (
    ClaimedNotification,
    claim_notifications,
    reclaim_abandoned_notifications,
    record_notification,
    undelivered,
)
from dicom_node.work.notification_send import NotificationError, send_notification

logger = logging.getLogger(__name__)

BATCH = 50


class NotificationScanner:
    """Sends due notifications; one per process that has the worker role.

    Parameters
    ----------
    config
        The node config (``notifications``, ``delivery``, ``worker.lease_seconds``).
    sessions
        Database sessions.
    """

    def __init__(self, config: NodeConfig, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions
        self.entries = {entry.name: entry for entry in config.notifications}
        self._connectors = {entry.name: DicomwebConnector(entry) for entry in config.notifications}

    @property
    def lease_seconds(self) -> float:
        """How long a claimed batch stays ours without a renewal (renewed around each
        send)."""
        longest = max(
            (e.connect_timeout_seconds + e.read_timeout_seconds for e in self.entries.values()),
            default=0.0,
        )
        return self.config.worker.lease_seconds + 3 * longest

    def scan(self) -> int:
        """Reclaim notifications of dead senders, send what is due and ready; how many
        were accepted.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            When the database fails (the scheduler logs it and runs the next scan).
        """
        reclaim_abandoned_notifications(self.sessions)
        sender = owner_id("notify")
        sent = 0
        while batch := claim_notifications(self.sessions, sender, BATCH, self.lease_seconds):
            unreachable: dict[str, StoreResult] = {}
            for claimed in batch:
                sent += self._send_one(claimed, unreachable)
            if len(batch) < BATCH or unreachable:
                break  # all sent, or a receiver is down: its backoff decides when again
        return sent

    def _send_one(self, claimed: ClaimedNotification, unreachable: dict[str, StoreResult]) -> int:
        """Send one claimed notification and record it; 1 when accepted. A target found
        unreachable in this scan is not tried again in it."""
        entry = self.entries.get(claimed.target)
        with self.sessions.begin() as session:
            self._renew(session, claimed)
            row = session.get_one(Notification, claimed.id)
            study_uid = session.get_one(Study, row.study_id).study_instance_uid
            missing = undelivered(session, claimed.job_id)
            document = None
            if entry is not None and not missing:
                document = notification_document(session, row, entry, self.config)
        facts = {
            "notification_id": claimed.id,
            "job_id": claimed.job_id,
            "study_uid": study_uid,
            "target": claimed.target,
            "kind": getattr(entry, "kind", None),
            "url": getattr(entry, "url", None),
            "idempotency_key": row.idempotency_key,
        }
        if entry is None or document is None:
            shown = ", ".join(str(i) for i in missing)
            reason = (
                f"no [[notifications]] entry named {claimed.target!r} any more"
                if entry is None
                else f"not sent: the archive does not hold the results (deliveries {shown} failed)"
            )
            failed = PostResult(StoreResult(Outcome.PERMANENT, None, reason), None)
            return self._record(claimed, failed, facts, WorkState.FAILED)
        if claimed.target in unreachable:
            outcome = PostResult(unreachable[claimed.target], None)
        else:
            outcome = self._deliver(entry, document)
            if outcome.result.outcome is Outcome.TRANSIENT and outcome.http_status is None:
                unreachable[claimed.target] = outcome.result
        return self._record(claimed, outcome, facts)

    def _renew(self, session: Session, claimed: ClaimedNotification) -> None:
        """Extend the lease of the rest of the batch before and after each send, so that
        a slow receiver does not make them look abandoned."""
        owned = leases.owned_by(Notification, claimed.worker_id)
        leases.renew(session, Notification, self.lease_seconds, owned)

    def _deliver(self, entry: NotificationBase, document: dict[str, object]) -> PostResult:
        """Send the document the way the entry's kind says."""
        try:
            session = self._connectors[entry.name].session()
        except DicomwebError as exc:
            return PostResult(transient(exc.reason), None)
        try:
            return send_notification(entry, document, session)
        except NotificationError as exc:
            return PostResult(exc.result, None)
        finally:
            session.close()

    def _record(
        self,
        claimed: ClaimedNotification,
        outcome: PostResult,
        facts: dict[str, object],
        state: WorkState | None = None,
    ) -> int:
        """Record a try (``state`` forces the end state) with its log and audit lines;
        1 when the receiver accepted it and the row was still ours."""
        result = outcome.result
        retry_at, failures = None, None
        if result.outcome is Outcome.STORED:
            state = WorkState.DONE
        elif state is None:
            after = next_try(
                result, claimed.attempts, claimed.permanent_failures, self.config.delivery, utcnow()
            )
            state, retry_at, failures = after.state, after.retry_at, after.permanent_failures
        with self.sessions.begin() as session:
            self._renew(session, claimed)
            ok = record_notification(
                session,
                claimed,
                state,
                http_status=outcome.http_status,
                error=result.error,
                retry_at=retry_at,
                permanent_failures=failures,
            )
        log = {k: facts[k] for k in ("notification_id", "job_id", "study_uid", "target")}
        if state is WorkState.DONE:
            logger.info("notification sent", extra={**log, "http_status": outcome.http_status})
        else:
            message = "notification " + (
                "failed" if state is WorkState.FAILED else "will be retried"
            )
            logger.warning(message, extra={**log, "error": result.error, "retry_at": retry_at})
        audit(
            AuditEvent.NOTIFICATION,
            **facts,
            outcome=str(result.outcome),
            http_status=outcome.http_status,
            state=str(state),
            attempt=claimed.attempts,
            error=result.error,
        )
        return int(ok and state is WorkState.DONE)
