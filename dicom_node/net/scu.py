"""Talking to peers as an SCU: C-ECHO, C-STORE of files, C-FIND of expected counts.

Shared by the CLI (``echo``, ``send``), study completion (``find_study_counts``) and
result delivery (``send_files``). Every function opens one association to a
:class:`~dicom_node.config.PeerConfig` (over TLS when ``peer.tls``), does its work, and
releases it. Per-file outcomes carry the peer's DIMSE status as an int, with
pynetdicom's meaning (``0x0000`` success, ``0xB0xx`` warning, ``0xA7xx`` out of
resources, ...), or ``None`` when no response came back.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from dicom_node.config import NodeConfig, PeerConfig, TlsSection
from dicom_node.errors import PeerError
from dicom_node.intake.completion import StudyCounts
from dicom_node.net.pynetdicom_internals import send_from_files
from dicom_node.net.store_outcome import (
    FailureKind,
    Outcome,
    StoreResult,
    classify_status,
    unanswered,
)

logger = logging.getLogger(__name__)

# An association may propose at most 128 presentation contexts (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
VERIFICATION = UID("1.2.840.10008.1.1")
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
_PEER_SPEC = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$")


class AssociationError(PeerError):
    """No association with ``peer``: refused, rejected, aborted or timed out.

    ``no_context`` is True when the peer accepted none of the proposed presentation
    contexts: it does not support those SOP classes (or transfer syntaxes) at all.
    """

    def __init__(self, peer: PeerConfig, reason: str, no_context: bool = False) -> None:
        self.peer = peer
        self.no_context = no_context
        super().__init__(
            f"no association with {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): {reason}",
            reason,
        )


@dataclass(frozen=True)
class LocalAE:
    """Who we are when we call a peer: AE title, timeout, and TLS material."""

    ae_title: str = "AINODE"
    timeout: float = 30.0
    tls: TlsSection | None = None

    @classmethod
    def from_config(cls, config: NodeConfig) -> LocalAE:
        """Our AE title, delivery timeout and TLS material from the node config."""
        return cls(config.node.ae_title, config.delivery.timeout_seconds, config.security.tls)


@dataclass(frozen=True)
class FileStatus:
    """The outcome of sending one file.

    ``status`` is the peer's DIMSE status, or None when none came back; ``failure`` then
    says why (by default the network: association refused or dropped, timeout; or no
    accepted context, or a file that is not DICOM) and ``reason`` says it in words.
    """

    path: Path
    sop_instance_uid: str | None
    status: int | None
    reason: str = ""
    failure: FailureKind = FailureKind.NETWORK

    @property
    def result(self) -> StoreResult:
        """Stored, transient or permanent, with the meaning (`dicom_node.net.store_outcome`)."""
        if self.status is not None:
            return classify_status(self.status)
        return unanswered(self.failure, self.reason or "no response")

    @property
    def ok(self) -> bool:
        """Success or warning (`classify_status`): the peer has the instance."""
        return self.result.outcome is Outcome.STORED


def resolve_peer(spec: str, config: NodeConfig | None) -> PeerConfig:
    """A peer from a config name, or from ``AET@host:port``.

    Raises
    ------
    ValueError
        When ``spec`` is neither a peer name in ``config`` nor ``AET@host:port``, or
        names a DICOMweb peer.
    """
    if config is not None:
        for peer in config.peers:
            if peer.name != spec:
                continue
            if not isinstance(peer, PeerConfig):
                raise ValueError(f"peer {spec!r} is a DICOMweb peer; this command speaks DIMSE")
            return peer
    match = _PEER_SPEC.match(spec)
    if match is None:
        known = ", ".join(p.name for p in config.peers) if config else "no config given"
        raise ValueError(f"not a peer name ({known}) nor AET@host:port: {spec!r}")
    host = match["host"].strip("[]")
    return PeerConfig(name=spec, ae_title=match["aet"], host=host, port=int(match["port"]))


def client_ssl_context(tls: TlsSection | None) -> ssl.SSLContext:
    """TLS towards a peer: its certificate checked against our CA (or the system's), and
    our own certificate presented when we have one (peers that require client certs).

    Raises
    ------
    OSError, ssl.SSLError
        When a certificate, key or CA file cannot be read.
    """
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    # Archives are usually addressed by IP; the chain is verified, the name is not.
    context.check_hostname = False
    if tls is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


@contextmanager
def open_association(
    local: LocalAE,
    peer: PeerConfig,
    contexts: Sequence[PresentationContext],
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[tuple[Any, Any]] | None = None,
) -> Iterator[Association]:
    """An established association with ``peer``, released (or aborted) on exit.

    ``ext_neg`` are extended negotiation items (SCP/SCU role selection for C-GET) and
    ``evt_handlers`` are bound to the association (the C-STORE handler of a C-GET).

    Raises
    ------
    AssociationError
        When the peer cannot be reached, rejects or aborts the association.
    """
    ae = AE(ae_title=local.ae_title)
    ae.requested_contexts = list(contexts)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = local.timeout
    ae.connection_timeout = local.timeout
    tls_args = (client_ssl_context(local.tls), peer.host) if peer.tls else None
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls_args,
            ext_neg=list(ext_neg) if ext_neg else None,
            evt_handlers=list(evt_handlers) if evt_handlers else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise AssociationError(peer, f"TLS or socket error: {exc}") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            reason = "rejected"
        elif assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
            raise AssociationError(
                peer, "the peer accepted none of the proposed presentation contexts", True
            )
        elif assoc.is_aborted:
            reason = "aborted"
        else:
            reason = "refused or timed out"
        raise AssociationError(peer, reason)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def echo(local: LocalAE, peer: PeerConfig) -> int:
    """C-ECHO ``peer``; the status it answers (0x0000: success).

    Raises
    ------
    AssociationError
        When there is no association, or the peer does not answer the C-ECHO.
    """
    with open_association(local, peer, [build_context(VERIFICATION)]) as assoc:
        response = assoc.send_c_echo()
        if "Status" not in response:
            raise AssociationError(peer, "no C-ECHO response (timeout or abort)")
        return int(response.Status)


@dataclass(frozen=True)
class _Planned:
    path: Path
    sop_class: str | None
    sop_instance: str | None
    transfer_syntax: str | None
    error: str = ""


def _plan(path: Path) -> _Planned:
    try:
        meta = read_file_meta_info(path)
        return _Planned(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except (InvalidDicomError, AttributeError, OSError) as exc:
        # Not a Part 10 file with a file meta: read it whole and send the dataset.
        try:
            dataset = dcmread(path, force=True, stop_before_pixels=True)
            return _Planned(path, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), None)
        except Exception:
            return _Planned(path, None, None, None, f"not a DICOM file: {exc}")


def _contexts(planned: Sequence[_Planned]) -> list[PresentationContext]:
    contexts: dict[tuple[str, str | None], PresentationContext] = {}
    for item in planned:
        if item.sop_class is None:
            continue
        if item.transfer_syntax:
            # Its own encoding in a context of its own, so the peer cannot pick another.
            contexts.setdefault(
                (item.sop_class, item.transfer_syntax),
                build_context(item.sop_class, [item.transfer_syntax]),
            )
        contexts.setdefault(
            (item.sop_class, None), build_context(item.sop_class, list(FALLBACK_SYNTAXES))
        )
    return list(contexts.values())


def _batches(planned: list[_Planned]) -> Iterator[list[_Planned]]:
    """Split files so that each association needs at most MAX_CONTEXTS contexts."""
    batch: list[_Planned] = []
    for item in planned:
        if batch and len(_contexts([*batch, item])) > MAX_CONTEXTS:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _not_accepted(item: _Planned) -> FileStatus:
    reason = f"peer accepted no context for {item.sop_class} in {item.transfer_syntax}"
    return FileStatus(item.path, item.sop_instance, None, reason, FailureKind.NO_CONTEXT)


def _send_one(assoc: Association, item: _Planned, message_id: int) -> FileStatus:
    accepted = {
        (str(cx.abstract_syntax), str(ts))
        for cx in assoc.accepted_contexts
        for ts in cx.transfer_syntax
    }
    sop_class = item.sop_class or ""
    if (sop_class, item.transfer_syntax) in accepted:
        # The file's own encoding: streamed from disk as it is, never decoded.
        response = assoc.send_c_store(item.path, msg_id=message_id)
    elif any((sop_class, str(ts)) in accepted for ts in FALLBACK_SYNTAXES):
        dataset = dcmread(item.path, force=True)
        if dataset.file_meta.get("TransferSyntaxUID", UID("")).is_compressed:
            dataset.decompress()
        response = assoc.send_c_store(dataset, msg_id=message_id)
    else:
        return _not_accepted(item)
    if "Status" not in response:
        return FileStatus(item.path, item.sop_instance, None, "no C-STORE response")
    return FileStatus(item.path, item.sop_instance, int(response.Status))


def _send_batch(
    local: LocalAE,
    peer: PeerConfig,
    batch: list[_Planned],
    report: Callable[[FileStatus], None],
) -> None:
    """Send ``batch`` in one association; every file gets exactly one report."""
    done: set[Path] = set()

    def once(status: FileStatus) -> None:
        done.add(status.path)
        report(status)

    try:
        with open_association(local, peer, _contexts(batch)) as assoc:
            for message_id, item in enumerate(batch, start=1):
                if not assoc.is_established:
                    once(FileStatus(item.path, item.sop_instance, None, "association lost"))
                    continue
                try:
                    once(_send_one(assoc, item, message_id % 0x10000))
                except (ValueError, AttributeError, OSError, RuntimeError) as exc:
                    once(FileStatus(item.path, item.sop_instance, None, str(exc)))
    except AssociationError as exc:
        for item in batch:
            if item.path not in done:
                if exc.no_context:
                    once(_not_accepted(item))
                else:
                    once(FileStatus(item.path, item.sop_instance, None, exc.reason))


def send_files(
    local: LocalAE,
    peer: PeerConfig,
    paths: Sequence[Path],
    progress: Callable[[FileStatus], None] | None = None,
) -> list[FileStatus]:
    """C-STORE each file to ``peer``, in one association (more only past 128 contexts).

    Each SOP class is proposed with the file's own transfer syntax and with Explicit and
    Implicit VR Little Endian as fallbacks. A file goes in its own encoding when the
    peer accepts it, streamed from disk; otherwise it is decoded and sent uncompressed.

    Parameters
    ----------
    progress
        Called with each file's outcome as soon as it is known.

    Returns
    -------
    list[FileStatus]
        One per path, in order. When an association fails, the files it should have
        carried get ``status=None`` and the reason.

    Raises
    ------
    ValueError
        When ``paths`` is empty.
    """
    if not paths:
        raise ValueError("send_files needs at least one path")
    # Send files from disk in their own encoding, without loading them whole.
    send_from_files()
    results: list[FileStatus] = []

    def report(status: FileStatus) -> None:
        results.append(status)
        if progress is not None:
            progress(status)

    planned = [_plan(Path(p)) for p in paths]
    for batch in _batches(planned):
        for item in batch:
            if item.error:
                report(FileStatus(item.path, None, None, item.error, FailureKind.NOT_DICOM))
        sendable = [item for item in batch if not item.error]
        if sendable:
            _send_batch(local, peer, sendable, report)
    order = {p: i for i, p in enumerate(Path(p) for p in paths)}
    return sorted(results, key=lambda r: order[r.path])


def _find(assoc: Association, query: Dataset) -> list[Dataset]:
    matches: list[Dataset] = []
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        code = int(status.get("Status", -1))
        if code in (0xFF00, 0xFF01) and identifier is not None:
            matches.append(identifier)
        elif code != 0x0000:
            raise RuntimeError(f"C-FIND failed with status 0x{code & 0xFFFF:04X}")
    return matches


def _count(dataset: Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def find_study_counts(
    local: LocalAE, peer: PeerConfig, study_uids: Sequence[str]
) -> dict[str, StudyCounts]:
    """Ask ``peer`` (C-FIND, study root) how many instances it holds of each study.

    Uses NumberOfStudyRelatedInstances at STUDY level and NumberOfSeriesRelatedInstances
    at SERIES level, all in one association. Studies the peer does not know, or for
    which it answers a failure, are left out of the result.

    Raises
    ------
    AssociationError
        When there is no association with ``peer``.
    """
    counts: dict[str, StudyCounts] = {}
    context = build_context(STUDY_ROOT_FIND)
    with open_association(local, peer, [context]) as assoc:
        for uid in study_uids:
            study = Dataset()
            study.QueryRetrieveLevel = "STUDY"
            study.StudyInstanceUID = uid
            study.NumberOfStudyRelatedInstances = ""
            series = Dataset()
            series.QueryRetrieveLevel = "SERIES"
            series.StudyInstanceUID = uid
            series.SeriesInstanceUID = ""
            series.NumberOfSeriesRelatedInstances = ""
            try:
                found = _find(assoc, study)
                if not found:
                    continue
                per_series = {
                    str(s.SeriesInstanceUID): n
                    for s in _find(assoc, series)
                    if (n := _count(s, "NumberOfSeriesRelatedInstances")) is not None
                }
            except (RuntimeError, AttributeError) as exc:
                logger.warning(
                    "C-FIND gave no counts",
                    extra={"peer": peer.name, "study_uid": uid, "error": exc},
                )
                continue
            counts[uid] = StudyCounts(_count(found[0], "NumberOfStudyRelatedInstances"), per_series)
            if not assoc.is_established:
                raise AssociationError(peer, "association lost during C-FIND")
    return counts
