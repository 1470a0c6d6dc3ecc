"""``dicom-node status -c CONFIG [--json]``: what the node holds, read from the database.

The report is a list of sections; each is a function ``(session, config) -> dict``
listed in :data:`SECTIONS` under its title: studies and the spool here, the queue
(jobs, deliveries, notifications, recent failures) from `dicom_node.work.queue_report`,
backfilled studies by state from `dicom_node.work.backfill`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.config import NodeConfig, load_config
from dicom_node.db.schema import Instance, Series, Study, StudyState
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work import queue_report
from dicom_node.work.backfill import backfill_section

Section = Callable[[Session, NodeConfig], dict[str, Any]]


def studies_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """Studies by state (every state listed, zeros included)."""
    rows = session.execute(select(Study.state, func.count()).group_by(Study.state))
    counts = {state: count for state, count in rows}
    return {state.value: int(counts.get(state, 0)) for state in StudyState}


def spool_section(session: Session, config: NodeConfig) -> dict[str, Any]:
    """Instances and series held, bytes used by them, free space left."""
    instances, used = session.execute(
        select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0))
    ).one()
    storage = config.node.storage_dir
    free = shutil.disk_usage(storage).free if storage.exists() else None
    return {
        "series": int(session.scalar(select(func.count(Series.id))) or 0),
        "instances": int(instances),
        "disk_used_bytes": int(used),
        "disk_free_bytes": free,
        "storage_dir": str(storage),
    }


SECTIONS: list[tuple[str, Section]] = [
    ("studies", studies_section),
    ("spool", spool_section),
    ("jobs", queue_report.jobs_section),
    ("deliveries", queue_report.deliveries_section),
    ("notifications", queue_report.notifications_section),
    ("failures", queue_report.failures_section),
    ("skipped", queue_report.skipped_section),
    ("chains", queue_report.chains_section),
    ("backfill", backfill_section),
]


def add_parser(subparsers: Any) -> None:
    """Register ``status`` and its options."""
    parser = subparsers.add_parser("status", help="studies, instances and disk use by state")
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def collect(config: NodeConfig) -> dict[str, dict[str, Any]]:
    """Every section of the report, by title."""
    engine = create_db_engine(config.node.database_url)
    try:
        with session_factory(engine)() as session:
            return {title: section(session, config) for title, section in SECTIONS}
    finally:
        engine.dispose()


def _human(value: Any, key: str) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if size < 1024 or unit == "TiB":
                return f"{size:.1f} {unit}" if unit != "B" else f"{value} B"
            size /= 1024
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    """Print every section of the report (or one JSON object); 2 on a bad config."""
    config = load_config(args.config)
    report = collect(config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for title, values in report.items():
        print(f"{title}:")
        width = max((len(k) for k in values), default=0)
        for key, value in values.items():
            print(f"  {key:<{width}}  {_human(value, key)}")
    return 0
