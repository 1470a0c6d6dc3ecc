"""The ``dicom-node`` command: one subcommand per module in this package.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``;
``main`` parses, configures logging once, and hands over. A command whose config does
not load lets the `ConfigError` rise: ``main`` prints it (each problem with its key) and
exits 2, the same for every command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dicom_node.errors import ConfigError
from dicom_node.logs import configure_logging

# Module names under dicom_node.cli, in the order `dicom-node --help` lists them.
COMMANDS = (
    "check_config",
    "serve",
    "echo",
    "send",
    "status",
    "retry",
    "backfill",
    "audit",
    "models",
    "finetune",
    "export",
    "evaluate",
    "results",
    "drift",
    "profile",
    "import_model",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="dicom-node", description="DICOM node that runs AI models on studies from the PACS."
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: config or INFO)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"dicom_node.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or "INFO")
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
