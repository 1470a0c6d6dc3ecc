"""``dicom-node serve -c CONFIG [--role listener|worker|all]``: run the node until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from dicom_node.config import load_config
from dicom_node.errors import ConfigError
from dicom_node.logs import configure_logging
from dicom_node.net.scp import tls_problems
from dicom_node.service import ROLES, Service
from dicom_node.work.package_check import model_package_problems

logger = logging.getLogger(__name__)

PRIVATE_UMASK = 0o027


def add_parser(subparsers: Any) -> None:
    """Register ``serve`` and its options."""
    parser = subparsers.add_parser(
        "serve", help="run the listener, scheduler and workers until SIGTERM"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="listener: DICOM listener and completion; worker: jobs and delivery; all: both",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the config and the model packages, then serve until SIGTERM; the exit status."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems = model_package_problems(config) + tls_problems(config)
    if problems:
        print(ConfigError(args.config, problems), file=sys.stderr)
        return 2
    if args.log_level is None:
        configure_logging(config.node.log_level)
    # APScheduler logs every run at INFO and, at WARNING, every run it skips because the
    # previous one still runs (by design: one run at a time). Its ERRORs (a job raised)
    # still show.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # Library warnings (pydicom on odd headers) become log lines, not stderr noise.
    logging.captureWarnings(True)
    # The database and the spool hold patient names and pixel data: whatever the
    # service creates is readable by its own group at most, whatever umask it inherits.
    os.umask(PRIVATE_UMASK)
    try:
        service = Service(config, role=args.role)
        return service.run()
    except OSError as exc:
        logger.error("cannot start", extra={"error": exc})
        return 1
