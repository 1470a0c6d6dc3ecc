"""``dicom-node check-config -c FILE``: print every problem with its key, exit non-zero."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.config import load_config
from dicom_node.errors import ConfigError
from dicom_node.net.scp import tls_problems
from dicom_node.work.notification_send import notification_file_problems
from dicom_node.work.package_check import model_package_problems
from dicom_node.work.routing import unmatchable_conditions
from dicom_node.work.version_check import model_card_warnings


def add_parser(subparsers: Any) -> None:
    """Register ``check-config`` and its options."""
    parser = subparsers.add_parser(
        "check-config", help="validate a config file and print each problem with its key"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.set_defaults(run=run)


def _report(path: str, problems: list[tuple[str, str]]) -> int:
    print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
    for key, message in problems:
        print(f"  {key}: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Print every problem with its key; 0 when the config and its packages are valid, else 1."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _report(exc.path, exc.problems)
    problems = (
        model_package_problems(config) + tls_problems(config) + notification_file_problems(config)
    )
    if problems:
        return _report(args.config, problems)
    for key, message in [*model_card_warnings(config), *unmatchable_conditions(config)]:
        print(f"warning: {key}: {message}", file=sys.stderr)
    print(
        f"{args.config}: OK ({len(config.peers)} peers, {len(config.models)} models, "
        f"{len(config.routes)} routes)"
    )
    return 0
