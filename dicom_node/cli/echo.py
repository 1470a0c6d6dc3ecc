"""``dicom-node echo PEER``: C-ECHO a peer from the config, or ``AET@host:port``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.cli.peer_args import add_peer_options, local_and_peer
from dicom_node.errors import ConfigError
from dicom_node.net.scu import AssociationError, echo


def add_parser(subparsers: Any) -> None:
    """Register ``echo`` and its options."""
    parser = subparsers.add_parser("echo", help="send C-ECHO to a peer (name or AET@host:port)")
    parser.add_argument("peer", help="a peer name from the config, or AET@host:port")
    add_peer_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """C-ECHO the peer and print its status; 0 on success, 1 on failure, 2 on bad arguments."""
    try:
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
