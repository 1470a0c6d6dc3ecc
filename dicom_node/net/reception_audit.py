"""The listener's audit lines: associations accepted, and what each reception brought.

A reception is one sender's session: a DIMSE association, or one STOW-RS request.
Received instances are counted in memory per reception and study (a dictionary update
on the store path) and written as one ``instances-received`` line per study when the
reception ends, so that the trail never costs a line per instance and counts both ways
in alike.
"""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field

from pynetdicom.association import Association, ServiceUser
from pynetdicom.events import Event

from dicom_node.audit import AuditEvent, audit


@dataclass(frozen=True, eq=False)
class Reception:
    """One sender's session, compared by identity: who sent, from where, by which way."""

    calling_aet: str | None  # None over STOW-RS
    client: str | None
    via: str  # "DIMSE" or "STOW-RS"


@dataclass
class _StudyCounts:
    outcomes: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    patient_id: str | None = None
    patient_name: str | None = None


def sender(assoc: Association) -> ServiceUser:
    """The peer that sends instances on ``assoc``: the calling AE of an association it
    opened (a C-STORE, or a C-MOVE's sub-operations), the called archive of one the node
    opened for a C-GET (its C-STORE sub-operations come back on it)."""
    return assoc.acceptor if assoc.is_requestor else assoc.requestor


def tls_peer(assoc: Association) -> str | None:
    """The subject of the client certificate the association's TLS socket verified, if any."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return "TLS (no client certificate)"
    names: list[str] = []
    for rdn in cert.get("subject", ()):
        names.extend(f"{pair[0]}={pair[1]}" for pair in rdn)
    return ",".join(names)


class ReceptionAudit:
    """Counts stored instances per reception and study, and writes the audit lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Reception, dict[str, _StudyCounts]] = {}
        self._associations: dict[Association, Reception] = {}

    def accepted(self, event: Event) -> None:
        """``EVT_ACCEPTED``: who associated, from where, over which TLS identity."""
        assoc = event.assoc
        audit(
            AuditEvent.ASSOCIATION_ACCEPTED,
            calling_aet=assoc.requestor.ae_title,
            called_aet=assoc.acceptor.ae_title,
            client=assoc.requestor.address,
            tls_peer=tls_peer(assoc),
        )

    def association(self, assoc: Association) -> Reception:
        """The reception of a DIMSE association (the same one for each of its C-STOREs)."""
        with self._lock:
            found = self._associations.get(assoc)
            if found is None:
                peer = sender(assoc)
                found = Reception(peer.ae_title, peer.address, "DIMSE")
                self._associations[assoc] = found
            return found

    def stored(
        self,
        reception: Reception,
        study_uid: str,
        outcome: str,
        size_bytes: int,
        patient: tuple[str | None, str | None],
    ) -> None:
        """Count one instance stored for ``study_uid`` (``outcome``: new, replaced,
        kept); ``patient`` is (ID, name) for the study's line."""
        with self._lock:
            studies = self._counts.setdefault(reception, {})
            counts = studies.setdefault(study_uid, _StudyCounts())
            counts.outcomes[outcome] += 1
            counts.bytes += size_bytes
            counts.patient_id, counts.patient_name = patient

    def ended(self, assoc: Association) -> None:
        """The association is over: its reception's lines (see :meth:`reception_ended`)."""
        with self._lock:
            reception = self._associations.pop(assoc, None)
        if reception is not None:
            self.reception_ended(reception)

    def reception_ended(self, reception: Reception) -> None:
        """The reception is over: one ``instances-received`` line per study it sent."""
        with self._lock:
            studies = self._counts.pop(reception, {})
        for study_uid, counts in studies.items():
            audit(
                AuditEvent.INSTANCES_RECEIVED,
                study_uid=study_uid,
                calling_aet=reception.calling_aet,
                client=reception.client,
                via=reception.via,
                instances=sum(counts.outcomes.values()),
                outcomes=dict(counts.outcomes),
                bytes=counts.bytes,
                patient_id=counts.patient_id,
                patient_name=counts.patient_name,
            )
