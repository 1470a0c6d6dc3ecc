"""End-to-end latency: a CT study sent by the PACS until its results are stored back in it.

Builds an uncompressed 512x512 CT series (the real ``693_UNCI.dcm`` slice repeated
along z), loads it into Orthanc (the PACS, loopback ports, its own temp config), and
has Orthanc C-STORE it to the node (``dicom-node serve``, SQLite, the demo CT model on
ONNX Runtime on the CPU, results sent back to Orthanc). The latency runs from the last
instance received by the node to the last result object stored in Orthanc, split into:

- quiet time: last instance received -> study complete (the completion rule: with
  ``--completion evidence`` a C-FIND to Orthanc confirms the counts after
  ``min_seconds``; with ``timer`` it is ``stable_seconds`` of silence);
- queue wait: study complete -> a worker starts the job (routing, scan interval);
- load: reading the spooled files (pydicom, no pixel decoding);
- decode + model: ``Model.predict`` (pixel decoding runs in a thread pool ahead of
  the network); decoding alone is measured apart on the same files for the split;
- results: building SR/SEG with ``sr_writer`` and writing them to the outbox;
- delivery: job done -> last result acknowledged by Orthanc (C-STORE, scan interval).

Every figure except the split of decoding comes from the node's own database rows.
The model time and quiet time are the work itself; everything else is overhead that
should stay under half of them.

Run:  python -m benchmarks.end_to_end [--slices 100] [--runs 3] [--completion evidence]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.pixels import pixel_array
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicom_node.db.schema import Delivery, Instance, Job, Study, WorkState
from dicom_node.db.sessions import create_db_engine, session_factory
from tests.conftest import get_free_port
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.studies import ct_series
from tests.peers import run_orthanc

PHASES = ("quiet", "queue wait", "load", "decode", "model", "results", "delivery")


@dataclass(frozen=True)
class Run:
    """Seconds per phase of one study, and the total (last received -> last stored)."""

    phases: dict[str, float]
    total: float
    results: int


def decode_seconds(paths: list[str]) -> float:
    """Decoding the spooled pixel data alone, one thread (the split of Model.predict)."""
    start = time.perf_counter()
    for path in paths:
        pixel_array(pydicom.dcmread(path))
    return time.perf_counter() - start


def measure(database_url: str) -> Run:
    """Phase times of the single study in the node's database."""
    engine = create_db_engine(database_url)
    try:
        with session_factory(engine)() as session:
            study = session.scalars(select(Study)).one()
            job = session.scalars(select(Job)).one()
            last_received = session.scalar(select(func.max(Instance.received_at)))
            delivered = session.scalars(
                select(Delivery.updated_at).where(Delivery.state == WorkState.DONE)
            ).all()
            paths = list(session.scalars(select(Instance.path)))
    finally:
        engine.dispose()
    assert last_received is not None and study.completed_at is not None
    assert job.started_at is not None and job.finished_at is not None
    decode = decode_seconds(paths)
    t = job.timings
    phases = {
        "quiet": (study.completed_at - last_received).total_seconds(),
        "queue wait": (job.started_at - study.completed_at).total_seconds(),
        "load": t.get("load", 0.0) + t.get("model_load", 0.0),
        "decode": min(decode, t["predict"]),
        "model": max(0.0, t["predict"] - decode),
        "results": t.get("results", 0.0) + t.get("outbox", 0.0),
        "delivery": (max(delivered) - job.finished_at).total_seconds(),
    }
    total = (max(delivered) - last_received).total_seconds()
    return Run(phases, total, len(delivered))


def one_run(workdir: Path, files: list[Path], completion: str) -> Run:
    port = get_free_port()
    url = f"sqlite:///{workdir / 'node.db'}"
    with run_orthanc(workdir, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:
        settings = (
            {"query_peer": "pacs", "min_seconds": 1.0, "stable_seconds": 30.0}
            if completion == "evidence"
            else {"stable_seconds": 5.0}
        )
        document = node_document(
            workdir,
            pacs=pacs,
            port=port,
            database_url=url,
            completion={**settings, "scan_interval_seconds": 0.5},
            delivery={"scan_interval_seconds": 0.5, "timeout_seconds": 30},
            worker={"poll_seconds": 0.5},
        )
        document["routes"] = document["routes"][:1]  # the CT route only
        config = write_config(workdir / "node.toml", document)
        ids = pacs.upload(files)
        with run_node(config, port=port) as node:
            wait_until(lambda: "model loaded" in node.log_text(), 120, "the model loads at start")
            pacs.store("node", ids)

            def delivered() -> bool:
                engine = create_db_engine(url)
                try:
                    with session_factory(engine)() as session:
                        states = session.scalars(select(Delivery.state)).all()
                        done = session.scalar(select(Job.state)) == WorkState.DONE
                finally:
                    engine.dispose()
                return done and bool(states) and all(s == WorkState.DONE for s in states)

            wait_until(delivered, 600, lambda: node.log_text()[-3000:], interval=0.1)
        return measure(url)


def table(runs: list[Run]) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    rows = [(name, median([r.phases[name] for r in runs])) for name in PHASES]
    total = median([r.total for r in runs])
    work = dict(rows)["quiet"] + dict(rows)["model"]
    overhead = sum(v for name, v in rows if name not in ("quiet", "model"))
    lines = [f"{'phase':<12} {'seconds':>8} {'share':>7}", "-" * 29]
    lines += [f"{name:<12} {value:8.2f} {value / total:7.1%}" for name, value in rows]
    lines += [
        "-" * 29,
        f"{'total':<12} {total:8.2f}   (last instance received -> last result stored)",
        f"overhead (all but quiet and model): {overhead:.2f} s = "
        f"{overhead / work:.0%} of quiet + model ({work:.2f} s); target < 50%",
        f"results per study: {runs[0].results}; runs: {len(runs)} (medians)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--completion", choices=["evidence", "timer"], default="evidence")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for index in range(args.runs):
            files = ct_series(root / f"ct{index}", args.slices, template="693_UNCI.dcm")
            run = one_run(root / f"run{index}", files, args.completion)
            print(f"run {index + 1}: total {run.total:.2f} s", file=sys.stderr)
            runs.append(run)
    print(
        f"{args.slices}-slice 512x512 CT, demo-ct-bone on ONNX Runtime (CPU), "
        f"completion by {args.completion}"
    )
    print(table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
