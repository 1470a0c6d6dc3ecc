"""Backfill benchmark: fetching a study from the archive into the node, against DCMTK.

Builds an uncompressed 512x512 CT series, loads it into Orthanc (the archive, on loopback
ports with its own temp config), and fetches it, several rounds, into a fresh target each
time:

- ``getscu`` (DCMTK's C-GET SCU writing files, no database): the baseline;
- ``backfill C-GET``: `dicom_node.work.backfill.Backfill` in this process, the instances
  stored by the listener's handler (fsync, SQLite row), the study completed and routed;
- ``Orthanc pushes``: Orthanc C-STOREs the study to a running ``dicom-node serve --role
  listener`` (the normal reception path), for scale;
- ``backfill C-MOVE``: the backfill asks Orthanc to move the study to that listener, then
  completes and routes it.

Numbers on a loaded machine are noisy: compare the ratios of one run.

Run:  python -m benchmarks.backfill [--slices 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from pydicom import dcmread

from benchmarks.ingest import NODE_AET, timed, write_series
from dicom_node.config import load_config
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.intake.spool import Spool
from dicom_node.work.backfill import Backfill, BackfillRequest
from tests.conftest import get_free_port
from tests.peers import Orthanc, run_orthanc, stop_process, wait_for_port

GETSCU = "/usr/bin/getscu"
GETSCU_AET = "GETSCU"
MODELS = Path(__file__).resolve().parent.parent / "models"


def write_node_config(root: Path, pacs: Orthanc, port: int, retrieve: str) -> Path:
    """A node whose CT route sends to the archive, which it backfills from."""
    root.mkdir(parents=True)
    config = root / "node.toml"
    config.write_text(
        f'[node]\nae_title = "{NODE_AET}"\nhost = "127.0.0.1"\nport = {port}\n'
        'storage_dir = "spool"\ndatabase_url = "sqlite:///node.db"\nlog_level = "WARNING"\n'
        f'[security]\nallowed_calling_aets = ["{pacs.aet}"]\n'
        "[completion]\nstable_seconds = 3600\n"
        f'[[peers]]\nname = "pacs"\nae_title = "{pacs.aet}"\nhost = "127.0.0.1"\n'
        f'port = {pacs.dicom_port}\nretrieve = "{retrieve}"\n'
        f'[[models]]\nname = "demo-ct-bone"\npath = "{MODELS / "demo-ct-bone"}"\n'
        '[[routes]]\nname = "ct"\nmodels = ["demo-ct-bone"]\nmatch = {Modality = "CT"}\n'
        'destinations = ["pacs"]\n'
    )
    return config


def backfill(config_path: Path) -> None:
    """One backfill of every study since 2000, in this process; fails unless routed."""
    config = load_config(config_path)
    engine = create_db_engine(config.node.database_url)
    try:
        peer = config.peer("pacs")
        request = BackfillRequest(peer, date(2000, 1, 1))
        run = Backfill(config, session_factory(engine), Spool(config.node.storage_dir), request)
        summary = run.process(run.find())
    finally:
        engine.dispose()
    if summary.routed != 1 or summary.failed:
        raise RuntimeError(f"backfill did not route the study: {summary.as_dict()}")


def getscu(pacs: Orthanc, study_uid: str, folder: Path) -> None:
    folder.mkdir(parents=True)
    subprocess.run(
        [
            *(GETSCU, "-aet", GETSCU_AET, "-aec", pacs.aet, "-S"),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
            *("-od", str(folder), "127.0.0.1", str(pacs.dicom_port)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def with_listener(config: Path, port: int, action: Callable[[], object]) -> float:
    """Seconds ``action`` takes while ``dicom-node serve --role listener`` runs."""
    log = (config.parent / "node.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "serve", "-c", str(config), "--role", "listener"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_for_port(port, process, 60.0)
        time.sleep(1.0)  # let its start-up scans pass
        return timed(action)
    finally:
        stop_process(process)
        log.close()


def one_round(
    times: dict[str, list[float]],
    pacs: Orthanc,
    port: int,
    folder: Path,
    study_uid: str,
    study_id: str,
) -> None:
    """Each fetcher once, into a fresh target under ``folder``; seconds added to ``times``."""
    times.setdefault("getscu", []).append(timed(lambda: getscu(pacs, study_uid, folder / "c")))
    get_config = write_node_config(folder / "get", pacs, port, "get")
    times.setdefault("backfill C-GET", []).append(timed(lambda: backfill(get_config)))
    push_config = write_node_config(folder / "push", pacs, port, "move")
    times.setdefault("Orthanc pushes", []).append(
        with_listener(push_config, port, lambda: pacs.store("node", [study_id]))
    )
    move_config = write_node_config(folder / "move", pacs, port, "move")
    times.setdefault("backfill C-MOVE", []).append(
        with_listener(move_config, port, lambda: backfill(move_config))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        files = write_series(work / "series", args.slices)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        port = get_free_port()
        modalities = {
            "node": (NODE_AET, "127.0.0.1", port),
            "getscu": (GETSCU_AET, "127.0.0.1", get_free_port()),
        }
        times: dict[str, list[float]] = {}
        with run_orthanc(work, modalities=modalities) as pacs:
            study = pacs.upload(files)
            study_id = pacs.rest("GET", f"/instances/{study[0]}/study")["ID"]
            for index in range(args.rounds):
                round_dir = work / f"round{index}"
                one_round(times, pacs, port, round_dir, study_uid, study_id)
    base = statistics.median(times["getscu"])
    print(f"\nbackfill of {args.slices} instances ({megabytes:.0f} MB), median of {args.rounds}")
    print(f"{'fetcher':<18} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'vs getscu':>10}")
    for name, rounds in times.items():
        seconds = statistics.median(rounds)
        print(
            f"{name:<18} {seconds:8.2f} {args.slices / seconds:8.1f} "
            f"{megabytes / seconds:8.1f} {base / seconds:9.2f}x"
        )
    print(
        "  rounds: "
        + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
