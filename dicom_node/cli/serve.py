"""``dicom-node serve -c CONFIG [--role listener|worker|all]``: run the node until SIGTERM."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dicom_node.config import NodeConfig, load_config
from dicom_node.errors import ConfigError
from dicom_node.logs import configure_logging
from dicom_node.net.scp import tls_problems
from dicom_node.service import ROLES, Service
from dicom_node.work.inference_process import InferenceProcess
from dicom_node.work.package_check import model_package_problems
from dicom_node.work.version_check import model_card_warnings

logger = logging.getLogger(__name__)

PRIVATE_UMASK = 0o027
PR_SET_PDEATHSIG = 1


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
    parser.add_argument(
        "--nice", type=int, default=0, help="lower this process's CPU priority by N (0-19)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="cap inference thread pools at N (0: no cap)"
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process ends (set by --role all for its inference process)",
    )
    parser.set_defaults(run=run)


def _as_child(parent_pid: int) -> None:
    """Die with the parent (Linux): a parent that stops cleanly stops this process first;
    one that dies (killed, crashed) takes it along at once, as when both ran in one
    process, and the leased work is picked up after the restart."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGKILL)


def _service(args: argparse.Namespace, config: NodeConfig) -> Service:
    """The process's service: under ``--role all`` with ``worker.own_process``, the
    listener role here and the worker role in a child process."""
    if args.role == "all" and config.worker.own_process:
        service = Service(config, role="listener")
        service.add_component(
            InferenceProcess(Path(args.config).resolve(), config.worker, args.log_level)
        )
        return service
    return Service(config, role=args.role)


def run(args: argparse.Namespace) -> int:
    """Check the config and the model packages, then serve until SIGTERM; the exit status."""
    config = load_config(args.config)
    problems = model_package_problems(config) + tls_problems(config)
    if problems:
        print(ConfigError(args.config, problems), file=sys.stderr)
        return 2
    if args.log_level is None:
        configure_logging(config.node.log_level)
    for key, message in model_card_warnings(config):
        logger.warning("model card does not apply", extra={"key": key, "reason": message})
    if args.parent_pid is not None:
        _as_child(args.parent_pid)
        # The parent serves the metrics endpoint.
        config = config.model_copy(
            update={"metrics": config.metrics.model_copy(update={"enabled": False})}
        )
    if args.nice:
        os.nice(args.nice)
    if args.threads and config.worker.intra_op_threads == 0:
        worker = config.worker.model_copy(update={"intra_op_threads": args.threads})
        config = config.model_copy(update={"worker": worker})
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
        return _service(args, config).run()
    except OSError as exc:
        logger.error("cannot start", extra={"error": exc})
        return 1
