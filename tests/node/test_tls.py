"""TLS on the listener, with a CA, server and client certificates generated here."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file
from pynetdicom import AE

from dicom_node.config import TlsSection
from dicom_node.net.scu import VERIFICATION, AssociationError, LocalAE, echo, send_files
from tests.node.conftest import SENDER_AET, RunningNode, wait_for
from tests.node.raw_peer import closed_by_node, connect


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(folder: Path) -> Path:
    """A CA and two certificates it signs: ``node`` (for 127.0.0.1) and ``client``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder, "ca", ca_key, ca)
    for stem in ("node", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(folder, stem, key, cert)
    return folder


def test_tls_association_with_client_certificate(
    start_node: Callable[..., RunningNode], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {
        "cert_file": str(pki / "node.crt"),
        "key_file": str(pki / "node.key"),
        "ca_file": str(pki / "ca.crt"),
    }
    node = start_node(security={"allowed_calling_aets": [SENDER_AET], "tls": tls})
    peer = node.peer.model_copy(update={"tls": True})
    client = LocalAE(
        SENDER_AET,
        10,
        TlsSection(
            cert_file=pki / "client.crt", key_file=pki / "client.key", ca_file=pki / "ca.crt"
        ),
    )
    assert echo(client, peer) == 0
    [result] = send_files(client, peer, [Path(get_testdata_file("CT_small.dcm"))])
    assert result.status == 0

    with pytest.raises(AssociationError, match="no association"):
        echo(LocalAE(SENDER_AET, 5), node.peer)  # plain TCP to a TLS listener
    # A client that trusts the node but presents no certificate is refused.
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.check_hostname = False
    ae = AE(ae_title=SENDER_AET)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 5
    try:
        assoc = ae.associate("127.0.0.1", node.config.node.port, tls_args=(context, "127.0.0.1"))
        assert not assoc.is_established
    finally:
        ae.shutdown()


def _tls_node(start_node: Callable[..., RunningNode], pki: Path, **security: object) -> RunningNode:
    tls = {
        "cert_file": str(pki / "node.crt"),
        "key_file": str(pki / "node.key"),
        "ca_file": str(pki / "ca.crt"),
    }
    return start_node(security={"allowed_calling_aets": [SENDER_AET], "tls": tls, **security})


def _client(pki: Path) -> LocalAE:
    return LocalAE(
        SENDER_AET,
        10,
        TlsSection(
            cert_file=pki / "client.crt", key_file=pki / "client.key", ca_file=pki / "ca.crt"
        ),
    )


def test_a_silent_connection_does_not_stall_tls_clients(
    start_node: Callable[..., RunningNode], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki")
    node = _tls_node(start_node, pki, allowed_hosts=["127.0.0.1/32"])
    port = node.config.node.port
    silent = connect(port)  # plain TCP, never a byte: no handshake on the accepting thread
    refused = connect(port, source="127.0.0.2")  # not allowed: closed before any handshake
    try:
        start = time.monotonic()
        assert echo(_client(pki), node.peer.model_copy(update={"tls": True})) == 0
        assert time.monotonic() - start < 5
        assert closed_by_node(refused, timeout=1)
    finally:
        silent.close()
        refused.close()
    [address] = [r for r in caplog.records if r.message.startswith("connection refused: address")]
    assert address.client == "127.0.0.2"


def test_failed_handshakes_are_logged_with_client_and_reason(
    start_node: Callable[..., RunningNode], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki")
    node = _tls_node(start_node, pki)
    with pytest.raises(AssociationError, match="no association"):
        echo(LocalAE(SENDER_AET, 5), node.peer)  # plain DICOM to the TLS port
    # A client that trusts the node but presents no certificate (from another address,
    # since failures are logged once a minute per client and reason).
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.check_hostname = False
    plain = connect(node.config.node.port, source="127.0.0.2")
    with plain, contextlib.suppress(OSError), context.wrap_socket(plain) as tls:
        tls.recv(1)
    assert wait_for(
        lambda: len([r for r in caplog.records if r.message == "TLS handshake failed"]) == 2,
        timeout=5,
    )
    first, second = [r for r in caplog.records if r.message == "TLS handshake failed"]
    assert (first.client, second.client) == ("127.0.0.1", "127.0.0.2")
    assert "WRONG_VERSION_NUMBER" in first.reason or "HTTP" in first.reason, first.reason
    assert "CERTIFICATE" in second.reason, second.reason
