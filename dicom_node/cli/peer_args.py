"""Options shared by the commands that call a peer (``echo``, ``send``)."""

from __future__ import annotations

import argparse

from dicom_node.config import DicomwebPeerConfig, NodeConfig, PeerConfig, load_config
from dicom_node.net.scu import LocalAE, resolve_peer


def add_peer_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--aet`` and ``--timeout`` to a command that calls a peer."""
    parser.add_argument(
        "-c", "--config", help="the node's config: peer names, our AE title and TLS material"
    )
    parser.add_argument("--aet", help="calling AE title (default: the config's, or AINODE)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the peer")


def local_and_peer(args: argparse.Namespace, spec: str) -> tuple[LocalAE, PeerConfig]:
    """Our identity (config, then ``--aet``/``--timeout``) and the peer named by ``spec``.

    Raises
    ------
    ConfigError
        When ``--config`` is given and invalid.
    ValueError
        When ``spec`` is neither a peer name in the config nor ``AET@host:port``.
    """
    config: NodeConfig | None = load_config(args.config) if args.config else None
    peer = resolve_peer(spec, config)
    local = LocalAE.from_config(config) if config else LocalAE()
    if args.aet:
        local = LocalAE(args.aet, local.timeout, local.tls)
    if args.timeout:
        local = LocalAE(local.ae_title, args.timeout, local.tls)
    return local, peer


def dicomweb_peer(args: argparse.Namespace, spec: str) -> DicomwebPeerConfig | None:
    """The DICOMweb peer that ``spec`` names in ``--config``; None for anything else.

    Raises
    ------
    ConfigError
        When ``--config`` is given and invalid.
    """
    if not args.config:
        return None
    for peer in load_config(args.config).peers:
        if peer.name == spec and isinstance(peer, DicomwebPeerConfig):
            return peer
    return None
