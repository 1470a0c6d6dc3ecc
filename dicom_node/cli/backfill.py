"""``dicom-node backfill --peer PEER --since DATE [...] -c CONFIG``: fetch past studies
from the archive and run them through the routes (`dicom_node.work.backfill`).

Resumable: run it again after an interruption and it completes what is missing; a second
run over the same range fetches nothing. With ``retrieve = "move"`` on the peer, the
node's listener must be running (``dicom-node serve``), since the archive stores there;
a DICOMweb peer is read by QIDO-RS and WADO-RS.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from datetime import date
from typing import Any

from tqdm import tqdm

from dicom_node.audit import close_audit_log, open_audit_log
from dicom_node.config import NodeConfig, load_config
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.errors import PeerError
from dicom_node.intake.spool import Spool
from dicom_node.work.backfill import Backfill, BackfillRequest, BackfillSummary


def _date(text: str) -> date:
    """``2026-10-01`` or ``20261001``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
        return value

    return parse


def add_parser(subparsers: Any) -> None:
    """Register ``backfill`` and its options."""
    parser = subparsers.add_parser(
        "backfill", help="retrieve past studies from the archive and run them through the routes"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--peer", required=True, help="the archive: a peer name from the config")
    parser.add_argument("--since", required=True, type=_date, help="first StudyDate (YYYY-MM-DD)")
    parser.add_argument("--until", type=_date, help="last StudyDate (default: today)")
    parser.add_argument("--modality", help="only studies with this modality (ModalitiesInStudy)")
    parser.add_argument("--route", help="only this route: its series are fetched and routed")
    parser.add_argument(
        "--limit", type=_positive(int), help="retrieve at most N studies in this run"
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        metavar="STUDIES_PER_MINUTE",
        help="start at most this many retrievals a minute (spares the archive)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="query and list what would be fetched; change nothing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def _print_summary(summary: BackfillSummary, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({**summary.as_dict(), "would_retrieve": summary.would_retrieve}))
        return
    for line in summary.would_retrieve:
        print(f"would retrieve {line}")
    print(
        f"found {summary.found}, skipped {summary.done_before} done before, "
        f"{summary.present} already present, {summary.no_match} matching no route; "
        + (
            f"would retrieve {len(summary.would_retrieve)}"
            if args.dry_run
            else f"retrieved {summary.retrieved}, routed {summary.routed} "
            f"({summary.jobs} job(s), {summary.instances} instances)"
        )
        + (
            f"; {summary.not_reached} left for the next run (--limit)"
            if summary.not_reached
            else ""
        )
        + f"; failed {len(summary.failed)}"
    )
    for uid, reason in summary.failed.items():
        print(f"failed {uid}: {reason}")


def _request(args: argparse.Namespace, config: NodeConfig) -> BackfillRequest:
    """The request the arguments make.

    Raises
    ------
    ValueError
        When the peer is unknown, or the dates are backwards.
    """
    try:
        peer = config.peer(args.peer)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if args.until is not None and args.until < args.since:
        raise ValueError(f"--until {args.until} is before --since {args.since}")
    return BackfillRequest(
        peer, args.since, args.until, args.modality, args.route, args.limit, args.rate, args.dry_run
    )


def _with_progress(backfill: Backfill, hidden: bool) -> BackfillSummary:
    """Find the studies, then process them under a progress bar on stderr."""
    studies = backfill.find()
    with tqdm(total=len(studies), unit="study", disable=hidden, file=sys.stderr) as bar:

        def progress(_uid: str) -> None:
            done = backfill.summary
            bar.set_postfix(retrieved=done.retrieved, routed=done.routed, failed=len(done.failed))
            bar.update()

        return backfill.process(studies, progress)


def run(args: argparse.Namespace) -> int:
    """Backfill and print the summary; 0 when nothing failed, 1 when a study failed or the
    archive refused (its status and what to configure there on stderr), 2 on bad
    arguments, 130 when interrupted (Ctrl-C; the next run resumes)."""
    config = load_config(args.config)
    with ExitStack() as resources:
        engine = create_db_engine(config.node.database_url)
        resources.callback(engine.dispose)
        resources.callback(close_audit_log, open_audit_log(config.audit, "backfill"))
        try:
            request = _request(args, config)
            spool = Spool(config.node.storage_dir)
            backfill = Backfill(config, session_factory(engine), spool, request)
        except ValueError as exc:
            print(f"backfill: {exc}", file=sys.stderr)
            return 2
        if not request.dry_run:
            spool.clear_incoming()  # what a killed backfill left half-received
        if backfill.method == "C-MOVE" and not request.dry_run:
            print(
                f"backfill: C-MOVE to {config.node.ae_title}: the node's listener must be "
                "running (dicom-node serve) for the archive to store into",
                file=sys.stderr,
            )
        try:
            summary = _with_progress(backfill, args.no_progress)
        except PeerError as exc:
            _print_summary(backfill.summary, args)
            print(f"backfill stopped: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            _print_summary(backfill.summary, args)
            print("backfill interrupted: run the same command again to resume", file=sys.stderr)
            return 130
    _print_summary(summary, args)
    return 1 if summary.failed else 0
