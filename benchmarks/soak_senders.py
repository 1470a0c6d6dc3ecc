"""The soak run's senders: Orthanc, DCMTK ``storescu`` and a timed modality, at once.

:func:`send_all` starts each planned send at its time, each sender with up to
``associations`` associations at once:

- Orthanc: the files are uploaded to Orthanc over REST (not timed), Orthanc C-STOREs the
  series to the node (``/modalities/node/store``, synchronous), then the uploaded series
  are deleted from Orthanc, so that it ends up holding the node's results only;
- ``storescu``: one association for the files, timed as a whole;
- the modality (pynetdicom): one association per send, every C-STORE timed on its own;
  these times are the run's C-STORE latency figures (p50, p99).

Each send's outcome is a :class:`SendResult`; a sender that fails (a refused
association, a failure status where Success was due, storescu's exit status) records
the reason instead of raising, so that the run goes on and the checks report it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from benchmarks.soak_traffic import MODALITY, ORTHANC, STORESCU, Send, Traffic
from tests.peers import Orthanc, PeerError

STORESCU_BIN = "/usr/bin/storescu"
STORESCU_AET, MODALITY_AET = "STORESCU", "SOAKMOD"
SUCCESS = 0x0000


@dataclass
class SendResult:
    """How one send went."""

    send: Send
    started: float  # seconds after the start of the run
    seconds: float
    # Instances answered with a failure status: (file name, status); expected for bad files.
    refused: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None  # why the send as a whole failed


@dataclass
class Latency:
    """One timed C-STORE of the modality: when (seconds after the start), how long."""

    at: float
    seconds: float


@dataclass
class Target:
    """Where the senders send: the node's listener, and the Orthanc that sends too."""

    node_aet: str
    node_port: int
    pacs: Orthanc
    orthanc_modality: str = "node"  # the node's name in Orthanc's DicomModalities


class Senders:
    """Runs the sends; collects results and latencies (thread-safe)."""

    def __init__(self, target: Target, start: float) -> None:
        self.target = target
        self.start = start
        self.results: list[SendResult] = []
        self.latencies: list[Latency] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.start

    def run(self, send: Send) -> SendResult:
        """Send one planned send with its sender; never raises."""
        started = self.now()
        result = SendResult(send, started, 0.0)
        try:
            if send.sender == ORTHANC:
                self._by_orthanc(send)
            elif send.sender == STORESCU:
                self._by_storescu(send)
            else:
                result.refused = self._by_modality(send)
        except (PeerError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        result.seconds = self.now() - started
        with self._lock:
            self.results.append(result)
        return result

    def _by_orthanc(self, send: Send) -> None:
        pacs = self.target.pacs
        uploaded = [pacs.rest("POST", "/instances", path.read_bytes()) for path in send.files]
        series = sorted({item["ParentSeries"] for item in uploaded})
        answer = pacs.store(self.target.orthanc_modality, series, timeout=1800)
        failed = int((answer or {}).get("FailedInstancesCount", 0))
        for identifier in series:
            pacs.rest("DELETE", f"/series/{identifier}")
        if failed:
            raise RuntimeError(f"Orthanc: {failed} of {len(send.files)} C-STOREs failed")

    def _by_storescu(self, send: Send) -> None:
        target = self.target
        run = subprocess.run(
            [
                STORESCU_BIN,
                "-aet",
                STORESCU_AET,
                "-aec",
                target.node_aet,
                "127.0.0.1",
                str(target.node_port),
                *map(str, send.files),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if run.returncode != 0:
            raise RuntimeError(f"storescu exited {run.returncode}: {run.stderr.strip()[-300:]}")

    def _by_modality(self, send: Send) -> list[tuple[str, int]]:
        datasets = [pydicom.dcmread(path) for path in send.files]
        contexts = sorted({str(ds.SOPClassUID) for ds in datasets})
        ae = AE(ae_title=MODALITY_AET)  # one per send: sends run on several threads
        for sop_class in contexts:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.target.node_port, ae_title=self.target.node_aet)
        if not assoc.is_established:
            raise RuntimeError("the node did not accept the modality's association")
        refused = []
        try:
            for path, ds in zip(send.files, datasets, strict=True):
                before = time.monotonic()
                status = assoc.send_c_store(ds)
                seconds = time.monotonic() - before
                code = int(status.Status) if "Status" in status else -1
                if code == SUCCESS:
                    with self._lock:
                        self.latencies.append(Latency(before - self.start, seconds))
                else:
                    refused.append((path.name, code))
        finally:
            assoc.release()
        return refused


def send_all(traffic: Traffic, senders: Senders, associations: int) -> None:
    """Start every send at its planned time, each sender on its own ``associations``
    threads (a send waits for a free one of its sender, as a PACS's send queue does, and
    a modality's radiograph never waits behind Orthanc's CT); return when all are done."""
    pools = {
        name: ThreadPoolExecutor(max_workers=associations, thread_name_prefix=name)
        for name in (ORTHANC, STORESCU, MODALITY)
    }
    try:
        for send in traffic.sends:
            delay = send.at - senders.now()
            if delay > 0:
                time.sleep(delay)
            pools[send.sender].submit(senders.run, send)
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
