"""Options shared by the commands that call a peer (``echo``, ``send``)."""

from __future__ import annotations

import argparse
import sys

from dicom_node.config import NodeConfig, PeerConfig, load_config
from dicom_node.errors import ConfigError
from dicom_node.scu import LocalAE, resolve_peer


def add_peer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", help="the node's config: peer names, our AE title and TLS material"
    )
    parser.add_argument("--aet", help="calling AE title (default: the config's, or AINODE)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the peer")


def local_and_peer(args: argparse.Namespace, spec: str) -> tuple[LocalAE, PeerConfig]:
    """Our identity and the peer named by ``spec``; exits with status 2 on a bad config
    or peer, as argparse does for bad arguments."""
    config: NodeConfig | None = None
    try:
        if args.config:
            config = load_config(args.config)
        peer = resolve_peer(spec, config)
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    local = LocalAE.from_config(config) if config else LocalAE()
    if args.aet:
        local = LocalAE(args.aet, local.timeout, local.tls)
    if args.timeout:
        local = LocalAE(local.ae_title, args.timeout, local.tls)
    return local, peer
