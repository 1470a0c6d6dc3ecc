"""``dicom-node echo PEER``: C-ECHO a peer from the config, or ``AET@host:port``; a
DICOMweb peer gets one QIDO-RS query instead."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.cli.peer_args import add_peer_options, dicomweb_peer, local_and_peer
from dicom_node.config import DicomwebPeerConfig
from dicom_node.errors import ConfigError
from dicom_node.net.dicomweb_auth import DicomwebConnector, DicomwebError
from dicom_node.net.dicomweb_query import ping
from dicom_node.net.scu import AssociationError, echo


def add_parser(subparsers: Any) -> None:
    """Register ``echo`` and its options."""
    parser = subparsers.add_parser(
        "echo", help="send C-ECHO to a peer (name or AET@host:port); QIDO-RS to a DICOMweb peer"
    )
    parser.add_argument("peer", help="a peer name from the config, or AET@host:port")
    add_peer_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """C-ECHO the peer (one QIDO-RS query to a DICOMweb peer) and print its status; 0 on
    success, 1 on failure, 2 on bad arguments."""
    try:
        web_peer = dicomweb_peer(args, args.peer)
        if web_peer is not None:
            return echo_dicomweb(web_peer)
        local, peer = local_and_peer(args, args.peer)
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        status = echo(local, peer)
    except AssociationError as exc:
        print(f"C-ECHO failed: {exc}", file=sys.stderr)
        return 1
    print(f"C-ECHO {peer.ae_title}@{peer.host}:{peer.port}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def echo_dicomweb(peer: DicomwebPeerConfig) -> int:
    """A DICOMweb peer's counterpart of C-ECHO: one QIDO-RS query with its credentials."""
    try:
        listed = ping(DicomwebConnector(peer))
    except DicomwebError as exc:
        print(f"QIDO-RS failed: {exc}", file=sys.stderr)
        return 1
    print(f"QIDO-RS {peer.url}: answered ({listed} study listed)")
    return 0
