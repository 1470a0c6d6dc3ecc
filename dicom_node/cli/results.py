"""``dicom-node results -c CONFIG [--model M] [--since DATE] [--json|--csv]``.

What each model found per study (labels, probabilities, volumes, result files), shadow
and live alike, for review and agreement analysis: a table for a person, ``--json``
for tools, ``--csv`` for a notebook (`dicom_node.work.results_report`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime
from typing import Any

from dicom_node.config import load_config
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work.results_report import FindingRow, finding_rows

# "score": the probability, or for segmentation the volume.
TABLE_COLUMNS = ("finished_at", "model", "mode", "study_uid", "label", "score", "positive")


def _date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: not an ISO date (2026-10-01 or 2026-10-01T08:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_parser(subparsers: Any) -> None:
    """Register ``results`` and its options."""
    parser = subparsers.add_parser("results", help="what each model found per study")
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--model", help="only this model's jobs")
    parser.add_argument("--since", type=_date, help="only jobs finished since (ISO, UTC)")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print a JSON list of rows")
    form.add_argument("--csv", action="store_true", help="print CSV with a header line")
    parser.set_defaults(run=run)


def _cell(row: FindingRow, column: str) -> str:
    if column == "score":
        if row.probability is not None:
            return f"{row.probability:.4f}"
        return "-" if row.volume_ml is None else f"{row.volume_ml} ml"
    value = row.as_dict()[column]
    return "-" if value is None else str(value)


def _print_table(rows: list[FindingRow]) -> None:
    cells = [[_cell(row, column) for column in TABLE_COLUMNS] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(TABLE_COLUMNS)]
    for line in [list(TABLE_COLUMNS), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _print_csv(rows: list[FindingRow]) -> None:
    fields = list(FindingRow.__dataclass_fields__)
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row.as_dict(), "files": ";".join(row.files)})


def run(args: argparse.Namespace) -> int:
    """Print the findings; 2 on a bad config."""
    config = load_config(args.config)
    engine = create_db_engine(config.node.database_url)
    try:
        with session_factory(engine)() as session:
            rows = finding_rows(session, model=args.model, since=args.since)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    elif args.csv:
        _print_csv(rows)
    else:
        _print_table(rows)
    return 0
