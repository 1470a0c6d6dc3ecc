"""The DICOM listener: C-ECHO and C-STORE of every storage SOP class, stored as received.

pynetdicom streams each incoming dataset into a temp file in the spool's ``incoming/``
folder (``STORE_RECV_CHUNKED_DATASET``), so memory stays flat however large the
instance and however many associations. :class:`StoreHandler` then starts the file's
fsync, reads only the header meanwhile, renames the file into the spool, writes its rows
while the folder is fsynced, and commits them once both fsyncs are done; only then does
it answer Success. Every sender waits on this path for each instance, which is why the
disk and the parsing overlap. Nothing is decoded or re-encoded, and no inference runs on
this thread.

Before pynetdicom sees a connection, :mod:`dicom_node.net.association_gate` runs on the
connection's own thread (TLS handshake, A-ASSOCIATE-RQ read within a deadline, AE titles
checked), and :mod:`dicom_node.net.connection_limits` gives each connection a slot it holds
until it ends. Once associated, PDUs are read by :mod:`dicom_node.net.pdu_guard`, whose only
cost per PDU over a plain read is one length comparison; what an association leaves
half-received is removed when it ends (:mod:`dicom_node.net.transfer_cleanup`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, cast

from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt, register_uid
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditEvent, audit
from dicom_node.config import NodeConfig, TlsSection
from dicom_node.db.schema import utcnow
from dicom_node.intake.catalog import (
    ReceivedInstance,
    RecordOutcome,
    RecordResult,
    find_instance_path,
    record_instance,
)
from dicom_node.intake.headers import HeaderError, InstanceHeaders, read_headers
from dicom_node.intake.spool import Spool
from dicom_node.log_safety import PerClientThrottle
from dicom_node.metrics import INSTANCES_RECEIVED
from dicom_node.net.association_gate import AssociationGate
from dicom_node.net.association_request import REJECT_REASONS
from dicom_node.net.connection_limits import ConnectionSlots
from dicom_node.net.pdu_guard import guard, set_low_latency
from dicom_node.net.pynetdicom_internals import (
    TESTED_VERSIONS,
    copy_context,
    create_association,
    register_server,
    untested_version,
)
from dicom_node.net.reception_audit import Reception, ReceptionAudit, sender
from dicom_node.net.scu import VERIFICATION
from dicom_node.net.transfer_cleanup import discard_unfinished_transfers
from dicom_node.net.transfer_space import TransferSpace

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
# STOW-RS to /studies/{uid} of an instance of another study (PS3.18 10.5.3).
DATA_SET_MISMATCH = 0xA900
# pynetdicom reads PDUs in Python; larger PDUs mean fewer round trips through it.
MAX_PDU_BYTES = 1 << 20
# Series whose routing fields this process has indexed (see StoreHandler._read_headers);
# forgotten all at once when full, which costs one more full header parse per series.
_SERIES_REMEMBERED = 4096


class StoreHandler:
    """The C-STORE handler: ``handler(event) -> status``; never raises.

    It also counts stores in flight, so that a stopping listener can let them finish.
    """

    def __init__(self, config: NodeConfig, sessions: sessionmaker[Session], spool: Spool) -> None:
        self.config = config
        self.sessions = sessions
        self.spool = spool
        self.min_free_bytes = config.node.min_free_disk_mb * 1024 * 1024
        self.space = TransferSpace(spool, self.min_free_bytes)
        self._indexed_series: dict[str, None] = {}
        self.reception = ReceptionAudit()
        self._in_flight = 0
        self._idle = threading.Condition()

    @contextmanager
    def tracked(self) -> Iterator[None]:
        """Count a store in flight (see :meth:`wait_idle`) while the block runs."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no C-STORE is being handled; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def __call__(self, event: Event) -> int:
        with self.tracked():
            request = cast(C_STORE, event.request)
            calling = sender(event.assoc).ae_title
            sop_uid = str(request.AffectedSOPInstanceUID or "")
            log = {"sop_uid": sop_uid, "calling_aet": calling}
            try:
                return self._store(event, calling, sop_uid, log)
            except Exception:
                logger.exception("C-STORE failed unexpectedly", extra=log)
                return PROCESSING_FAILURE

    def _store(self, event: Event, calling: str, sop_uid: str, log: dict[str, Any]) -> int:
        path = Path(event.dataset_path)
        if self.space.was_discarded(path):
            logger.error(
                "C-STORE refused: free disk below min_free_disk_mb when the transfer started",
                extra=log,
            )
            return OUT_OF_RESOURCES
        transfer_syntax = str(event.context.transfer_syntax)
        reception = self.reception.association(event.assoc)
        return self.store_file(path, transfer_syntax, calling, sop_uid, log, reception=reception)

    def store_file(
        self,
        path: Path,
        transfer_syntax_uid: str,
        calling: str | None,
        sop_uid: str,
        log: dict[str, Any],
        study_uid: str | None = None,
        reception: Reception | None = None,
    ) -> int:
        """Store a complete received file (in the spool's ``incoming/``) as C-STORE does:
        fsync, header read, rename into the spool, rows committed; the DIMSE status.

        The STOW-RS receiver (`dicom_node.net.stow_receiver`) calls it for each part, inside
        :meth:`tracked`. ``sop_uid`` is the UID the sender announced, and ``study_uid``
        the study a STOW-RS request was addressed to: the dataset must agree.
        ``reception`` is the C-STORE's association or the STOW-RS request, whose audit
        line counts the instance.
        """
        try:
            data_sync = self.spool.start_fsync(path)
        except OSError as exc:
            logger.error("C-STORE refused: cannot read the transfer", extra={**log, "error": exc})
            return OUT_OF_RESOURCES
        try:
            headers = self._read_headers(path, sop_uid)
        except HeaderError as exc:
            logger.warning(
                "C-STORE refused", extra={**log, "reason": exc.reason, "status": hex(exc.status)}
            )
            return exc.status
        log["study_uid"] = headers.study_instance_uid
        if study_uid is not None and headers.study_instance_uid != study_uid:
            logger.warning("C-STORE refused: not of the study addressed", extra=log)
            return DATA_SET_MISMATCH
        if self.spool.free_bytes() < self.min_free_bytes:
            logger.error(
                "C-STORE refused: free disk below min_free_disk_mb",
                extra={**log, "free_mb": self.spool.free_bytes() // (1024 * 1024)},
            )
            return OUT_OF_RESOURCES
        dest = self.spool.path_for(
            headers.study_instance_uid, headers.series_instance_uid, headers.sop_instance_uid
        )
        received = ReceivedInstance(
            headers=headers,
            transfer_syntax_uid=transfer_syntax_uid,
            path=str(dest),
            size_bytes=path.stat().st_size,
            calling_ae_title=calling,
            received_at=utcnow(),
        )
        try:
            pending = self.spool.move_in(path, dest, data_sync)
        except FileExistsError:
            return self._store_again(reception, path, dest, received, log)
        except OSError as exc:
            logger.error("C-STORE refused: cannot write the spool", extra={**log, "error": exc})
            return OUT_OF_RESOURCES
        replace = self.config.node.duplicate_policy == "replace"
        recorded = self._record(
            reception, received, log, before_commit=pending.wait, replace=replace
        )
        if recorded is None:
            return OUT_OF_RESOURCES
        if recorded.outcome is RecordOutcome.KEPT:
            # The same SOP Instance UID arrived under other study/series UIDs: keep_first
            # keeps the recorded one, and the new name, which no row names, goes.
            dest.unlink(missing_ok=True)
        elif recorded.orphaned_path is not None:
            Path(recorded.orphaned_path).unlink(missing_ok=True)
        return SUCCESS

    def _read_headers(self, path: Path, sop_uid: str) -> InstanceHeaders:
        """Header fields of ``path``: the series' routing fields only for the first
        instance of a series this process sees (its later instances need the rest only)."""
        headers = read_headers(path, sop_uid, series_fields=False)
        if headers.series_instance_uid in self._indexed_series:
            return headers
        return read_headers(path, sop_uid)

    def _store_again(
        self,
        reception: Reception | None,
        path: Path,
        dest: Path,
        received: ReceivedInstance,
        log: dict[str, Any],
    ) -> int:
        """An instance whose spool name exists: stored before (or a left-over of a store
        that failed after its rename, which no row names)."""
        if self.config.node.duplicate_policy == "keep_first" and (
            find_instance_path(self.sessions, received.headers.sop_instance_uid) is not None
        ):
            logger.info("duplicate instance kept as first received", extra=log)
            path.unlink(missing_ok=True)
            self._count(reception, received, RecordOutcome.KEPT)
            return SUCCESS
        try:
            self.spool.commit(path, dest)
        except OSError as exc:
            logger.error("C-STORE refused: cannot write the spool", extra={**log, "error": exc})
            return OUT_OF_RESOURCES
        recorded = self._record(reception, received, log, before_commit=None, replace=True)
        return OUT_OF_RESOURCES if recorded is None else SUCCESS

    def _record(
        self,
        reception: Reception | None,
        received: ReceivedInstance,
        log: dict[str, Any],
        before_commit: Callable[[], None] | None,
        replace: bool,
    ) -> RecordResult | None:
        """Commit the rows; None (logged) when the database or the file's fsync failed."""
        try:
            recorded = record_instance(self.sessions, received, before_commit, replace=replace)
        except SQLAlchemyError as exc:
            logger.error("C-STORE refused: database write failed", extra={**log, "error": exc})
            return None
        except OSError as exc:  # from before_commit: the file's fsync
            logger.error("C-STORE refused: cannot write the spool", extra={**log, "error": exc})
            return None
        if len(self._indexed_series) >= _SERIES_REMEMBERED:
            self._indexed_series.clear()
        self._indexed_series[received.headers.series_instance_uid] = None
        outcome = recorded.outcome
        if outcome is RecordOutcome.NEW:
            INSTANCES_RECEIVED.inc()
        level = logging.DEBUG if outcome is RecordOutcome.NEW else logging.INFO
        logger.log(level, f"instance {outcome}", extra={**log, "bytes": received.size_bytes})
        self._count(reception, received, outcome)
        return recorded

    def _count(self, reception: Reception | None, received: ReceivedInstance, outcome: str) -> None:
        if reception is None:
            return
        h = received.headers
        self.reception.stored(
            reception,
            h.study_instance_uid,
            outcome,
            received.size_bytes,
            (h.patient_id, h.patient_name),
        )


def log_rejected(event: Event) -> None:
    """Tell the administrator who was turned away by pynetdicom's own negotiation (the
    association limit), with the reason it answered (pynetdicom logs it only at DEBUG)."""
    requestor = event.assoc.requestor
    answer = event.assoc.acceptor.primitive
    code = (answer.result, answer.result_source, answer.diagnostic) if answer else ()
    reason = REJECT_REASONS.get(cast(tuple[int, int, int], code), f"A-ASSOCIATE-RJ {code}")
    logger.warning(
        "association rejected: " + reason,
        extra={"calling_aet": requestor.ae_title, "client": requestor.address},
    )
    audit(
        AuditEvent.ASSOCIATION_REJECTED,
        refusal="association rejected: " + reason,
        calling_aet=requestor.ae_title,
        client=requestor.address,
    )


class ListenerRequestHandler(RequestHandler):
    """Runs the :class:`~dicom_node.net.association_gate.AssociationGate` on the connection's
    own thread, then the association on a guarded socket; when it ends, removes its
    unfinished transfers and gives back the connection's slot at once."""

    def handle(self) -> None:
        """Admit the connection through the gate, then run its association to the end."""
        server = cast(ListenerServer, self.server)
        host = str(self.client_address[0])
        try:
            admitted = server.gate.admit(self.request, host)
            if admitted is None:
                return
            self.request = admitted.sock
            assoc = create_association(self)
            try:
                guard(assoc, admitted.request, MAX_PDU_BYTES, server.gate.network_timeout)
                evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
                assoc.start()
                assoc.join()
                assoc.dul.join(timeout=5.0)
                discard_unfinished_transfers(assoc)
            finally:
                if server.reception is not None:  # its audit line, and its counts freed
                    server.reception.ended(assoc)
        finally:
            cast(socket.socket, self.request).close()
            server.slots.release(host)


class SharedContexts(list[PresentationContext]):
    """The supported contexts, copied cheaply for each association.

    pynetdicom deep-copies the server's contexts for every association; with every
    storage SOP class in every transfer syntax that is ~6,600 UID objects and 0.1-0.3 s
    per association. UIDs are immutable, so a shallow copy of each context (with its own
    transfer syntax list) is an equivalent copy.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return [copy_context(context) for context in self]


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's server with the checks made on the accepting thread: the client
    address allow-list and the connection slots (both a dictionary lookup); all the
    rest runs on the connection's own thread (:class:`ListenerRequestHandler`)."""

    daemon_threads = True
    request_queue_size = 64  # socketserver's 5 lets a burst of connects stall the rest
    allowed_networks: tuple[Any, ...] = ()
    gate: AssociationGate
    reception: ReceptionAudit | None = None
    slots: ConnectionSlots

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse an address off the allow-list, or past its connection slots (logged)."""
        host = str(client_address[0])
        if self.allowed_networks and not any(
            ip_address(host) in network for network in self.allowed_networks
        ):
            self.gate.log_refusal("connection refused: address not allowed", host)
            return False
        refusal = self.slots.acquire(host)
        if refusal is not None:
            self.gate.log_refusal("connection refused: connection limit", host, reason=refusal)
            return False
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread; give its slot back if none could start."""
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nothing else gives the slot back
            self.slots.release(str(client_address[0]))
            raise

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection with low-latency socket options; nothing else on this thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        set_low_latency(client)
        return client, address


def server_ssl_context(tls: TlsSection) -> ssl.SSLContext:
    """TLS for the listener; with ``ca_file`` clients must present a certificate it signed.

    Raises
    ------
    OSError, ssl.SSLError
        When a certificate, key or CA file cannot be read.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_problems(config: NodeConfig) -> list[tuple[str, str]]:
    """``(key path, message)`` when the listener's TLS files do not load: what ``serve``
    would fail on, for ``check-config`` to say first."""
    tls = config.security.tls
    if tls is None:
        return []
    try:
        server_ssl_context(tls)
    except (OSError, ssl.SSLError) as exc:
        return [("security.tls", f"cannot load the certificate, key or CA file: {exc}")]
    return []


def build_listener_ae(config: NodeConfig) -> AE:
    """The acceptor AE: every storage SOP class (plus configured private ones) in every
    transfer syntax pydicom knows, Verification, the calling AE allow-list and timeouts."""
    node = config.node
    ae = AE(ae_title=node.ae_title)
    # Where a sender offers several, prefer Explicit VR Little Endian (keeps VRs).
    transfer_syntaxes = [ExplicitVRLittleEndian] + [
        ts for ts in AllTransferSyntaxes if ts != ExplicitVRLittleEndian
    ]
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), transfer_syntaxes)
    for uid in node.private_sop_classes:
        # pynetdicom serves a SOP class only once it knows its service class.
        register_uid(uid, "PrivateStorage_" + uid.replace(".", "_"), StorageServiceClass)
        ae.add_supported_context(uid, transfer_syntaxes)
    ae.add_supported_context(VERIFICATION)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = node.network_timeout_seconds
    return ae


def make_listener_server(ae: AE, config: NodeConfig, evt_handlers: list[Any]) -> ListenerServer:
    """The listener's server for ``ae`` on ``node.host``/``node.port``, not yet serving:
    TLS, allow-lists, connection slots and the association gate from ``config``.

    Raises
    ------
    OSError
        When the address cannot be bound, or a TLS file cannot be read.
    """
    node, security = config.node, config.security
    ssl_context = server_ssl_context(security.tls) if security.tls else None
    server = ae.make_server(
        (node.host, node.port),
        evt_handlers=evt_handlers,
        server_class=ListenerServer,
        request_handler=ListenerRequestHandler,
    )
    assert isinstance(server, ListenerServer)
    server.contexts = SharedContexts(server.contexts)
    server.allowed_networks = tuple(ip_network(h, strict=False) for h in security.allowed_hosts)
    # No address gets more than the association limit; connections still negotiating
    # may take as many slots again as associations, so one address never takes them all.
    per_host = min(node.max_associations_per_host, node.max_associations)
    server.slots = ConnectionSlots(per_host, 2 * node.max_associations)
    server.gate = AssociationGate(config, ssl_context, PerClientThrottle())
    if not security.allowed_calling_aets:
        logger.warning("security.allowed_calling_aets is empty: any calling AE is accepted")
    return server


class Listener:
    """The running C-STORE/C-ECHO server of one node process.

    Parameters
    ----------
    config
        The node config (``node``, ``security`` sections).
    sessions
        Database sessions for the index.
    spool
        Where instances go; its ``incoming/`` folder receives pynetdicom's temp files.
    """

    def __init__(self, config: NodeConfig, sessions: sessionmaker[Session], spool: Spool) -> None:
        self.config = config
        self.spool = spool
        self.handler = StoreHandler(config, sessions, spool)
        self.ae = build_listener_ae(config)
        self.server: ListenerServer | None = None
        self._restore = ExitStack()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port = 0``)."""
        if self.server is None:
            raise RuntimeError("the listener is not started")
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Bind and serve in background threads.

        Raises
        ------
        OSError
            When the address cannot be bound (port in use, permission).
        """
        version = untested_version()
        if version is not None:
            logger.warning(
                "pynetdicom version not tested with the listener's use of its internals",
                extra={"version": version, "tested": TESTED_VERSIONS},
            )
        self.spool.clear_incoming()
        server = make_listener_server(
            self.ae,
            self.config,
            [
                (evt.EVT_C_STORE, self.handler),
                (evt.EVT_REJECTED, log_rejected),
                (evt.EVT_ACCEPTED, self.handler.reception.accepted),
            ],
        )
        server.reception = self.handler.reception
        # Incoming data streams to disk next to the spool, so the final move is a rename.
        self._restore.enter_context(self.handler.space.installed())
        register_server(self.ae, server)
        self.server = server
        threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
        node = self.config.node
        logger.info(
            "listening",
            extra={
                "ae_title": node.ae_title,
                "host": node.host,
                "port": self.port,
                "tls": server.gate.ssl_context is not None,
            },
        )

    def stop(self, grace_seconds: float = 20.0) -> None:
        """Stop accepting, let associations finish for up to ``grace_seconds``, then wait
        for the C-STOREs in flight and abort what is left.

        An aborted sender was not answered Success for the instance it was sending, so
        it sends it again; nothing answered Success is lost.
        """
        server, self.server = self.server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace_seconds
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        self.handler.wait_idle(timeout=max(0.0, deadline - time.monotonic()) + 30.0)
        remaining = server.active_associations
        for assoc in remaining:
            assoc.abort()
        self._restore.close()
        logger.info("listener stopped", extra={"aborted_associations": len(remaining)})
