"""``dicom-node send PATH... --to PEER``: C-STORE files and folders in one association."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dicom_node.cli.peer_args import add_peer_options, local_and_peer
from dicom_node.errors import ConfigError
from dicom_node.net.scu import FileStatus, send_files


def add_parser(subparsers: Any) -> None:
    """Register ``send`` and its options."""
    parser = subparsers.add_parser(
        "send", help="send files or folders (recursively) to a peer with C-STORE"
    )
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders")
    parser.add_argument("--to", required=True, help="a peer name from the config, or AET@host:port")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_peer_options(parser)
    parser.set_defaults(run=run)


def collect(paths: list[Path]) -> list[Path]:
    """Files under ``paths`` (folders recursively, hidden files skipped), sorted per folder.

    Raises
    ------
    FileNotFoundError
        When a path does not exist.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def describe(status: FileStatus) -> str:
    """A file's outcome as ``send`` prints it: the status in hex, or ``not sent``."""
    if status.status is None:
        return "not sent"
    return f"0x{status.status:04X}"


def run(args: argparse.Namespace) -> int:
    """Send every file; 0 when the peer stored them all (success or warning status), 1 when
    any failed, 2 on bad arguments."""
    try:
        local, peer = local_and_peer(args, args.to)
        files = collect(args.paths)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if not files:
        print("nothing to send", file=sys.stderr)
        return 2
    with tqdm(total=len(files), unit="file", disable=args.no_progress, file=sys.stderr) as bar:
        results = send_files(local, peer, files, progress=lambda _status: bar.update())
    for result in results:
        if not result.ok:
            print(f"{result.path}: {describe(result)} {result.reason}".rstrip(), file=sys.stderr)
    summary = Counter(describe(r) for r in results)
    print(
        f"sent {len(files)} file(s) to {peer.ae_title}@{peer.host}:{peer.port}: "
        + ", ".join(f"{status} x{count}" for status, count in sorted(summary.items()))
    )
    return 0 if all(r.ok for r in results) else 1
