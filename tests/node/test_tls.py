"""TLS on the listener, with a CA, server and client certificates generated here."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE

from dicom_node.config import TlsSection
from dicom_node.scu import VERIFICATION, AssociationError, LocalAE, echo, send_files
from tests.node.conftest import SENDER_AET, RunningNode
from tests.pki import make_pki


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
