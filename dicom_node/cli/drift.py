"""``dicom-node drift -c CONFIG [--model M] [--json]``: each model's window vs its profile.

For every configured model whose package carries ``profile.json``: feature, test,
reference, current window, statistic, p-value and status (`dicom_node.work.drift`).
Exit status 0 when nothing drifts, 3 when a feature does, 2 on a bad config or profile.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicom_node.config import load_config
from dicom_node.db.schema import utcnow
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.errors import ConfigError
from dicom_node.work.drift import (
    PROFILE_FILE,
    FeatureDrift,
    ProfileError,
    as_rows,
    compare,
    current_window,
    package_profile,
)
from inference import ModelPackageError, validate_package

DRIFTED = 3
COLUMNS = ("model", "feature", "test", "reference", "current", "statistic", "p_value", "status")


def add_parser(subparsers: Any) -> None:
    """Register ``drift`` and its options."""
    parser = subparsers.add_parser(
        "drift", help="each model's recent inputs and outputs vs its profile"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--model", help="only this model")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.set_defaults(run=run)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _print_table(rows: list[FeatureDrift]) -> None:
    cells = [[_cell(getattr(row, c)) for c in COLUMNS] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(COLUMNS)]
    for line in [list(COLUMNS), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def run(args: argparse.Namespace) -> int:
    """Print the drift table; see the module docstring for the exit status."""
    config = load_config(args.config)
    models = [m for m in config.models if args.model in (None, m.name)]
    if not models:
        raise ConfigError(args.config, [("models", f"no model named {args.model!r}")])
    rows: list[FeatureDrift] = []
    engine = create_db_engine(config.node.database_url)
    try:
        with session_factory(engine)() as session:
            for model in models:
                try:
                    profile = package_profile(validate_package(model.path))
                except (ModelPackageError, ProfileError) as exc:
                    print(f"{model.name}: {exc}", file=sys.stderr)
                    return 2
                if profile is None:
                    print(f"{model.name}: no {PROFILE_FILE} in {model.path}", file=sys.stderr)
                    continue
                window = current_window(session, model.name, config.drift, utcnow())
                rows += compare(model.name, profile, window.records, config.drift)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(as_rows(rows), indent=2))
    else:
        _print_table(rows)
    return DRIFTED if any(row.status == "drift" for row in rows) else 0
