"""``dicom-node audit -c CONFIG --study UID [--since TIME] [--json]``: what happened to a
study, read from the audit trail alone (`dicom_node.audit`).

Prints one line per event, oldest first: received (from whom, how many), completed,
each job with its model and version, each result object, each delivery and commitment,
requeues by hand, and retention's removal of its rows. ``--json`` prints the lines as
a JSON list instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from dicom_node.audit import study_history
from dicom_node.config import load_config

# Fields every line has; the text output shows the rest as key=value.
_COMMON = ("time", "event", "host", "pid")


def _since(text: str) -> datetime:
    """An ISO 8601 date or time; naive values are UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time {text!r} (e.g. 2026-11-29 or 2026-11-29T08:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_parser(subparsers: Any) -> None:
    """Register ``audit`` and its options."""
    parser = subparsers.add_parser("audit", help="what happened to a study (the audit trail)")
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    parser.add_argument("--since", type=_since, help="only events from this time (ISO 8601)")
    parser.add_argument("--json", action="store_true", help="print the events as JSON")
    parser.set_defaults(run=run)


def _text(line: dict[str, Any]) -> str:
    rest = " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in line.items()
        if k not in _COMMON and v is not None
    )
    return f"{line['time']} {line['event']} {rest}"


def run(args: argparse.Namespace) -> int:
    """Print the study's events; 1 when the trail knows nothing of it, 2 on a bad config."""
    config = load_config(args.config)
    folder = config.audit.dir
    if not folder.is_dir():
        print(f"audit: no audit trail at {folder} (audit.dir)", file=sys.stderr)
        return 1
    history = study_history(folder, args.study, args.since)
    if args.json:
        print(json.dumps(history, indent=2))
    else:
        for line in history:
            print(_text(line))
    if not history:
        print(f"audit: no events for study {args.study} in {folder}", file=sys.stderr)
        return 1
    return 0
