"""Ingest benchmark: the node's listener against DCMTK storescp, Orthanc and storescu sending.

Builds a 200-slice uncompressed 512x512 CT series, loads it into Orthanc (the PACS, on
loopback ports with its own temp config), and has Orthanc C-STORE it to DCMTK
``storescp`` (the baseline), to the node's listener with a handler that does nothing
(``benchmarks.receive_floor``: what pynetdicom itself costs, the floor of any handler)
and to the node (``dicom-node serve``, SQLite index on, fsync on) in turn, several
rounds; then the same with DCMTK ``storescu`` as the sender. Each node round starts a
fresh node (empty spool and database), so every instance is a first receipt. The row
"node, CT job runs" is the same node while it runs its CT model (demo-ct-bone, ONNX
Runtime) on other studies throughout the transfer: the goal is at most 1.25x the idle
node's time per instance (inference in its own lower-priority process).
Finally 16 associations send large instances to the node at once while its peak RSS is
sampled: received data goes to disk as it arrives, so memory must stay flat. Last,
Orthanc sends the series to a fresh node by C-STORE and, with its DICOMweb client, by
STOW-RS over HTTPS, so that a user sees what each path costs.

Run:  python -m benchmarks.ingest [--slices 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.receive_floor import FLOOR_AET
from tests.conftest import get_free_port
from tests.node.test_tls import make_pki
from tests.peers import run_orthanc, run_storescp, stop_process, wait_for_port

STORESCU = "/usr/bin/storescu"
NODE_AET = "AINODE"
# DCMTK storescp (the baseline), the node's listener doing nothing (what pynetdicom
# itself costs), and the node.
RECEIVERS = ("storescp", "floor", "node", "node, CT job runs")
WARMED_UP = "result writers warmed up"
MODEL = Path(__file__).resolve().parent.parent / "models" / "demo-ct-bone"
# Studies queued for the model before a busy round: it must still be running them when
# the timed transfer ends.
LOAD_STUDIES = 3
# A CT route to the model; its results go to a peer that is not there (retried).
MODEL_CONFIG = f"""
[completion]
stable_seconds = 1
scan_interval_seconds = 0.25
[[peers]]
name = "nowhere"
ae_title = "NOWHERE"
host = "127.0.0.1"
port = 9
[[models]]
name = "demo-ct-bone"
path = "{MODEL}"
backend = "onnxruntime"
[[routes]]
name = "ct"
models = ["demo-ct-bone"]
match = {{Modality = "CT"}}
destinations = ["nowhere"]
"""


def write_series(folder: Path, slices: int, size: int = 512) -> list[Path]:
    """An uncompressed CT series of ``slices`` ``size`` x ``size`` int16 slices."""
    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(slices):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0, 0, float(index)]
        ds.Rows = ds.Columns = size
        pixels = rng.integers(-1000, 2000, (size, size), dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_large(folder: Path, count: int, frames: int) -> list[Path]:
    """``count`` multi-frame instances of ``frames`` 512x512 frames each (about 0.5 MB/frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    frame = np.zeros((frames, 512, 512), dtype=np.int16).tobytes()
    paths = []
    for index in range(count):
        ds: Dataset = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Rows = ds.Columns = 512
        ds.NumberOfFrames = frames
        ds.PixelData = frame
        path = folder / f"large{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int
    root: Path

    def peak_rss_mb(self) -> float:
        return _status_kb(self.process.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        return _status_kb(self.process.pid, "VmRSS") / 1024

    def wait_until_warm(self, timeout: float = 60.0) -> None:
        """Wait for the start-up warm-up (highdicom's tables, in a background thread) to
        end, so that a round measures a running node, not its first seconds."""
        deadline = time.monotonic() + timeout
        log = self.root / "node.log"
        while WARMED_UP not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the node did not warm up; see {log}")
            time.sleep(0.1)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class NodeRunner:
    """Starts fresh nodes (empty spool and database) on one fixed port."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.workdir = workdir
        self.port = get_free_port()
        self.runs = 0
        self.extra_config = extra_config  # more TOML sections (the STOW-RS receiver)

    def start(self, model: bool = False) -> Node:
        """A fresh node; with ``model``, CT studies run through demo-ct-bone."""
        self.runs += 1
        root = self.workdir / f"node{self.runs}"
        root.mkdir(parents=True)
        config = root / "node.toml"
        config.write_text(
            f'[node]\nae_title = "{NODE_AET}"\nhost = "127.0.0.1"\nport = {self.port}\n'
            'storage_dir = "spool"\ndatabase_url = "sqlite:///node.db"\n'
            'max_associations = 32\nlog_level = "INFO"\n'
            + (MODEL_CONFIG if model else "[completion]\nstable_seconds = 3600\n")
            + self.extra_config
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "node.log").open("wb"),
        )
        wait_for_port(self.port, process, 30.0)
        node = Node(process, self.port, root)
        node.wait_until_warm()
        return node


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def storescu(port: int, aet: str, files: list[Path]) -> None:
    subprocess.run(
        [STORESCU, "-aet", "STORESCU", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def busy_round(send: Callable[[str], object], runner: NodeRunner, load: list[list[Path]]) -> float:
    """Seconds to send the series to a fresh node while its model runs on ``load``.

    Raises
    ------
    RuntimeError
        When the model was not running from the start to the end of the transfer.
    """
    node = runner.start(model=True)
    log = node.root / "node.log"
    try:
        for files in load:
            storescu(node.port, NODE_AET, files)
        deadline = time.monotonic() + 120
        while "job started" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no job started; see {log}")
            time.sleep(0.1)
        seconds = timed(lambda: send("node"))
        done = log.read_text(errors="replace").count("job done")
    finally:
        stop_process(node.process)
    if done >= len(load):
        raise RuntimeError(f"the model finished its {done} jobs before the transfer ended")
    return seconds


def rounds(
    send: Callable[[str], object], runner: NodeRunner, count: int, load: list[list[Path]]
) -> dict[str, list[float]]:
    """Seconds per round for each receiver; ``send(receiver)`` sends the series to it.
    Every node round starts a fresh node, so that each instance is a first receipt."""
    times: dict[str, list[float]] = {name: [] for name in RECEIVERS}
    for _ in range(count):
        times["storescp"].append(timed(lambda: send("storescp")))
        times["floor"].append(timed(lambda: send("floor")))
        node = runner.start()
        try:
            times["node"].append(timed(lambda: send("node")))
        finally:
            stop_process(node.process)
        times["node, CT job runs"].append(busy_round(send, runner, load))
    return times


@contextmanager
def run_floor(workdir: Path) -> Iterator[int]:
    """``benchmarks.receive_floor`` on a free port: the node's listener doing nothing."""
    port = get_free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.receive_floor", str(port), str(workdir / "floor")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, 30.0)
        yield port
    finally:
        stop_process(process)


def memory_under_load(runner: NodeRunner, files: list[Path]) -> tuple[float, float, float]:
    """Node RSS before, peak RSS while len(files) associations send at once, total MB sent."""
    node = runner.start()
    try:
        time.sleep(1.0)
        before = node.rss_mb()
        threads = [
            threading.Thread(target=storescu, args=(node.port, NODE_AET, [f])) for f in files
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak = node.peak_rss_mb()
    finally:
        stop_process(node.process)
    stored = len(list((node.root / "spool" / "instances").rglob("*.dcm")))
    if stored != len(files):
        raise RuntimeError(f"the node stored {stored} of {len(files)} large instances")
    return before, peak, sum(f.stat().st_size for f in files) / 1e6


def fsync_latency_ms(folder: Path, count: int = 50, size: int = 512 * 1024) -> float:
    """Mean time to write and fsync a ``size`` file here: the floor of a durable store."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    start = time.perf_counter()
    for index in range(count):
        with (folder / f"{index}.bin").open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return (time.perf_counter() - start) / count * 1000


def table(title: str, times: dict[str, list[float]], count: int, megabytes: float) -> None:
    base = statistics.median(times["storescp"])
    print(f"\n{title}: {count} instances, {megabytes:.0f} MB, median of {len(times['node'])}")
    print(
        f"{'receiver':<18} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'ms/inst':>8} "
        f"{'vs storescp':>12}"
    )
    for name in RECEIVERS:
        seconds = statistics.median(times[name])
        print(
            f"{name:<18} {seconds:8.2f} {count / seconds:8.1f} {megabytes / seconds:8.1f} "
            f"{seconds / count * 1000:8.1f} {base / seconds:11.1f}x"
        )
    ratio = statistics.median(times["node, CT job runs"]) / statistics.median(times["node"])
    print(f"  while a CT job runs: {ratio:.2f}x the idle node's time (goal: at most 1.25x)")
    print(
        "  rounds: "
        + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items())
    )


def stow_vs_c_store(
    work: Path, files: list[Path], count: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per round for Orthanc sending the series to a fresh node by C-STORE and by
    STOW-RS (its DICOMweb client, one request, HTTPS with a bearer token), and the node's
    highest peak RSS (MB) per path."""
    pki = make_pki(work / "pki")
    (work / "stow-tokens").write_text("bench-token\n")
    web_port = get_free_port()
    runner = NodeRunner(
        work / "stow",
        f'[dicomweb]\nenabled = true\nhost = "127.0.0.1"\nport = {web_port}\n'
        f'tokens_file = "{work / "stow-tokens"}"\n[dicomweb.tls]\n'
        f'cert_file = "{pki / "node.crt"}"\nkey_file = "{pki / "node.key"}"\n',
    )
    runner.workdir.mkdir()
    server = {
        "Url": f"https://127.0.0.1:{web_port}/",
        "HttpHeaders": {"Authorization": "Bearer bench-token"},
    }
    times: dict[str, list[float]] = {"C-STORE": [], "STOW-RS": []}
    peaks = dict.fromkeys(times, 0.0)
    with run_orthanc(
        work / "stow",
        modalities={"node": (NODE_AET, "127.0.0.1", runner.port)},
        dicomweb=True,
        dicomweb_servers={"node": server},
        extra={"HttpsCACertificates": str(pki / "ca.crt"), "HttpsVerifyPeers": True},
    ) as pacs:
        pacs.upload(files)
        [study_id] = pacs.study_ids()
        sends: dict[str, Callable[[], object]] = {
            "C-STORE": lambda: pacs.store("node", [study_id]),
            "STOW-RS": lambda: pacs.rest(
                "POST", "/dicom-web/servers/node/stow", {"Resources": [study_id]}, timeout=600
            ),
        }
        for _ in range(count):
            for name, send in sends.items():
                node = runner.start()
                try:
                    times[name].append(timed(send))
                    peaks[name] = max(peaks[name], node.peak_rss_mb())
                finally:
                    stop_process(node.process)
                stored = len(list((node.root / "spool" / "instances").rglob("*.dcm")))
                if stored != len(files):
                    raise RuntimeError(f"{name}: the node stored {stored} of {len(files)}")
    return times, peaks


def stow_table(
    measured: tuple[dict[str, list[float]], dict[str, float]], count: int, megabytes: float
) -> None:
    times, peaks = measured
    print(
        f"\nOrthanc sends to the node by C-STORE and by STOW-RS (HTTPS, one request): "
        f"{count} instances, {megabytes:.0f} MB, median of {len(times['STOW-RS'])}"
    )
    print(f"{'path':<10} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'ms/inst':>8} {'peak MB':>8}")
    for name, rounds_ in times.items():
        seconds = statistics.median(rounds_)
        print(
            f"{name:<10} {seconds:8.2f} {count / seconds:8.1f} {megabytes / seconds:8.1f} "
            f"{seconds / count * 1000:8.1f} {peaks[name]:8.0f}"
        )
    print(
        "  rounds: "
        + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--associations", type=int, default=16)
    parser.add_argument("--frames", type=int, default=100, help="frames per large instance")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        files = write_series(work / "series", args.slices)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        runner = NodeRunner(work)
        load = [write_series(work / f"load{n}", args.slices) for n in range(LOAD_STUDIES)]
        with run_storescp(work / "storescp-out") as scp, run_floor(work) as floor_port:
            receivers = {
                "storescp": (scp.aet, scp.port),
                "floor": (FLOOR_AET, floor_port),
                "node": (NODE_AET, runner.port),
            }
            modalities = {name: (aet, "127.0.0.1", port) for name, (aet, port) in receivers.items()}
            with run_orthanc(work, modalities=modalities) as pacs:
                pacs.upload(files)
                [study_id] = pacs.study_ids()
                by_orthanc = rounds(
                    lambda name: pacs.store(name, [study_id]), runner, args.rounds, load
                )
            by_storescu = rounds(
                lambda name: storescu(receivers[name][1], receivers[name][0], files),
                runner,
                args.rounds,
                load,
            )
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
            f"write+fsync of 512 KB here: {fsync_latency_ms(work / 'fsync'):.1f} ms "
            "(per instance the node fsyncs the file, its folder and the SQLite WAL, the "
            "first two while it parses the header and writes the rows)"
        )
        table("Orthanc sends", by_orthanc, len(files), megabytes)
        table("DCMTK storescu sends", by_storescu, len(files), megabytes)
        large = write_large(work / "large", args.associations, args.frames)
        before, peak, sent = memory_under_load(runner, large)
        print(
            f"\n{args.associations} associations at once, {sent:.0f} MB in all "
            f"({sent / args.associations:.0f} MB each): node RSS {before:.0f} MB before, "
            f"peak {peak:.0f} MB"
        )
        stow_table(stow_vs_c_store(work, files, args.rounds), len(files), megabytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
