"""Soak run: a day of a hospital's traffic through the node in one run.

Orthanc (REST ``store``), DCMTK ``storescu`` and a modality (pynetdicom) send a mix of
studies (`benchmarks.soak_traffic`: CT series of 100-500 slices, radiographs, an MR
study, studies split over two associations, duplicates, bad files) at ``--rate``
instances per second, each sender over up to ``--associations`` associations at once,
to a node running as real processes (``dicom-node serve --role all``, or
``--split-roles`` for a listener and a worker process; SQLite, or ``--postgres``) with
the demo models, routes that deliver every result back to Orthanc, and retention with a
short ``keep_hours``.
Every ``--interval`` seconds it samples each node process's RSS, open fds and threads,
the queue depth and oldest queued job's age, the database and spool sizes
(`benchmarks.soak_sampler`); the modality times each C-STORE.

Once the senders are done it waits until the node has processed and delivered
everything and retention has emptied its stores, then prints a table over time, the
invariants (every instance stored once, every study processed, every result delivered
exactly once, nothing lost, stores emptied) and the trends (each process's peak RSS
in the last quarter at most 10% above the first quarter's, p99 C-STORE latency flat,
database and spool bounded), and writes a PNG plot. Exit status 1 when an invariant fails.

Run:  python -m benchmarks.soak [--instances 20000] [--rate 10] [--postgres]
      python -m benchmarks.soak --short      (600 instances in about two minutes)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.soak_checks import Check, archive_sop_uids, invariants, trends
from benchmarks.soak_report import checks_text, plot, require_matplotlib, table
from benchmarks.soak_sampler import Sample, Sampler, folder_size
from benchmarks.soak_senders import MODALITY_AET, STORESCU_AET, Latency, Senders, Target, send_all
from benchmarks.soak_traffic import Traffic, plan_traffic
from dicom_node.audit import read_audit
from dicom_node.db.schema import Study
from dicom_node.db.sessions import create_db_engine, session_factory
from tests.conftest import get_free_port
from tests.orchestration.node import node_document, run_node, write_config
from tests.peers import Orthanc, run_orthanc

NODE_AET = "AINODE"


@dataclass(frozen=True)
class SoakOptions:
    """One run's size, pace and node settings (the command line's options)."""

    instances: int = 20000
    rate: float = 10.0  # instances per second, on average
    associations: int = 4
    ct_slices: tuple[int, int] = (100, 500)
    split_gap: float = 120.0  # seconds between the two parts of a split study
    keep_seconds: float = 120.0  # retention.keep_hours, in seconds
    stable_seconds: float = 30.0  # completion.stable_seconds
    interval: float = 5.0  # seconds between samples
    drain_timeout: float = 1800.0  # after the senders: processing, delivery, retention
    postgres: bool = False
    split_roles: bool = False


SHORT = SoakOptions(
    instances=600,
    rate=40.0,
    ct_slices=(80, 120),
    split_gap=5.0,
    keep_seconds=5.0,
    stable_seconds=2.0,
    interval=1.0,
    drain_timeout=600.0,
)


@dataclass
class SoakOutcome:
    traffic: Traffic
    samples: list[Sample]
    latencies: list[Latency]
    sending_end: float
    invariants: list[Check]
    trends: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.invariants)


def node_config(work: Path, pacs: Orthanc, port: int, url: str, options: SoakOptions) -> Path:
    """The node's config: demo models, CT and CR routes to Orthanc, short retention."""
    keep = options.keep_seconds
    document = node_document(
        work,
        pacs=pacs,
        database_url=url,
        port=port,
        node={"max_associations": 32, "log_level": "INFO"},
        security={"allowed_calling_aets": [pacs.aet, STORESCU_AET, MODALITY_AET]},
        completion={"stable_seconds": options.stable_seconds, "scan_interval_seconds": 0.5},
        routes=[
            {
                "name": "ct",
                "models": ["demo-ct-bone"],
                "match": {"Modality": "CT"},
                "destinations": ["pacs"],
            },
            {
                "name": "radiographs",
                "models": ["demo-cr-classifier"],
                "match": {"Modality": ["CR", "DX"]},
                "destinations": ["pacs"],
            },
        ],
        retention={
            "keep_hours": keep / 3600,
            "scan_interval_seconds": min(60.0, max(1.0, keep / 2)),
        },
        audit={"dir": work / "audit"},
    )
    return write_config(work / "node.toml", document)


@contextmanager
def database(work: Path, postgres: bool) -> Iterator[str]:
    """A fresh database's URL: a SQLite file, or a throw-away PostgreSQL database."""
    if not postgres:
        yield f"sqlite:///{work / 'node.db'}"
        return
    from tests.orchestration.conftest import create_postgres_database, drop_postgres_database

    url, admin = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url, admin)


def _settled(sessions: Any, storage: Path) -> bool:
    """Everything processed, delivered and removed by retention: no study row left
    (retention forgets a study only once its jobs and deliveries are over), no file."""
    with sessions() as session:
        if session.query(Study.id).first() is not None:
            return False
    return folder_size(storage)[0] == 0


def run_soak(work: Path, options: SoakOptions, log: Any = print) -> SoakOutcome:
    """Plan the traffic, run the node and the senders, sample, wait, check.

    Raises
    ------
    tests.peers.PeerError
        When Orthanc or the node does not start.
    """
    traffic = plan_traffic(
        work / "traffic",
        options.instances,
        ct_slices=options.ct_slices,
        split_gap=options.split_gap,
        rate=options.rate,
    )
    log(
        f"planned {traffic.instances} C-STOREs in {len(traffic.sends)} sends, "
        f"{len(traffic.expected)} studies"
    )
    port = get_free_port()
    roles = ("listener", "worker") if options.split_roles else ("all",)
    with ExitStack() as stack:
        url = stack.enter_context(database(work, options.postgres))
        pacs = stack.enter_context(
            run_orthanc(work, modalities={"node": (NODE_AET, "127.0.0.1", port)})
        )
        config = node_config(work, pacs, port, url, options)
        nodes = [
            stack.enter_context(run_node(config, role, port if role != "worker" else None))
            for role in roles
        ]
        engine = create_db_engine(url)
        stack.callback(engine.dispose)
        sessions = session_factory(engine)
        start = time.monotonic()
        roots = {node.role: node.process.pid for node in nodes if node.process is not None}
        storage = work / "storage"
        sampler = stack.enter_context(
            Sampler(roots, sessions, url, storage, start, options.interval)
        )
        senders = Senders(Target(NODE_AET, port, pacs), start)
        send_all(traffic, senders, options.associations)
        sending_end = senders.now()
        log(f"senders done after {sending_end:.0f} s; waiting for the node to settle")
        deadline = time.monotonic() + options.drain_timeout
        while not _settled(sessions, storage) and time.monotonic() < deadline:
            time.sleep(options.interval)
        log(
            f"settled after {senders.now():.0f} s"
            if time.monotonic() < deadline
            else f"NOT settled after {options.drain_timeout:.0f} s more"
        )
        sampler.stop()
        last = sampler.sample()
        found = invariants(
            traffic,
            senders.results,
            read_audit(work / "audit"),
            archive_sop_uids(pacs),
            sessions,
            last,
        )
    samples = [*sampler.samples, last]
    return SoakOutcome(
        traffic,
        samples,
        senders.latencies,
        sending_end,
        found,
        trends(samples, senders.latencies, sending_end),
    )


def _options(args: argparse.Namespace) -> SoakOptions:
    base = SHORT if args.short else SoakOptions()
    chosen = {
        key: value
        for key, value in vars(args).items()
        if key in SoakOptions.__dataclass_fields__ and value is not None
    }
    if "ct_slices" in chosen:
        chosen["ct_slices"] = tuple(chosen["ct_slices"])
    return SoakOptions(**{**base.__dict__, **chosen})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="600 instances, fast timers")
    parser.add_argument("--instances", type=int)
    parser.add_argument("--rate", type=float, help="instances per second, on average")
    parser.add_argument("--associations", type=int, help="sends at once, per sender")
    parser.add_argument(
        "--ct-slices", type=int, nargs=2, metavar=("MIN", "MAX"), help="slices per CT series"
    )
    parser.add_argument("--split-gap", type=float, help="seconds between a study's two parts")
    parser.add_argument("--keep-seconds", type=float, help="retention.keep_hours, in seconds")
    parser.add_argument("--stable-seconds", type=float, help="completion.stable_seconds")
    parser.add_argument("--interval", type=float, help="seconds between samples")
    parser.add_argument(
        "--drain-timeout", type=float, help="seconds to wait after the senders for the node"
    )
    parser.add_argument(
        "--postgres", action="store_true", default=None, help="a throw-away PostgreSQL database"
    )
    parser.add_argument(
        "--split-roles", action="store_true", default=None, help="listener and worker processes"
    )
    parser.add_argument("--plot", type=Path, default=Path("soak.png"), help="the PNG to write")
    parser.add_argument("--no-plot", action="store_true", help="no plot (no matplotlib needed)")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args()
    if not args.no_plot:
        require_matplotlib()
    options = _options(args)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        outcome = run_soak(work, options)
    print(f"\n{options}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    print(table(outcome.samples, outcome.latencies))
    print("invariants:\n" + checks_text(outcome.invariants))
    print("trends (timings; compare on a quiet machine):\n" + checks_text(outcome.trends))
    if outcome.sending_end < 10 * options.keep_seconds:
        print(
            "  (sending lasted under 10x --keep-seconds: retention never reached a steady "
            "state, so these trends say little; the invariants above still hold)"
        )
    if not args.no_plot:
        plot(args.plot, outcome.samples, outcome.latencies, outcome.sending_end)
        print(f"plot: {args.plot}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
