"""Sampling a running node every few seconds: its processes, its queue, its stores.

Per process of the node (each ``dicom-node serve`` started and every process under it,
such as the inference child of ``--role all``), read from ``/proc`` (no psutil needed):
resident memory, open file descriptors, threads. From the database: queue depth and
the oldest queued job's age (the Prometheus gauges' own collector,
`dicom_node.metrics.QueueCollector`), and the number of study rows. On disk: the
database's size (SQLite's file with its WAL, or PostgreSQL's ``pg_database_size``)
and the spool's size and instance files.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Study
from dicom_node.metrics import QueueCollector

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class ProcessSample:
    rss_mb: float
    fds: int
    threads: int


@dataclass(frozen=True)
class Sample:
    """The node at one moment (``at``: seconds after the start of the run)."""

    at: float
    processes: dict[str, ProcessSample]  # label -> figures
    queue_depth: int
    oldest_queued_s: float
    study_rows: int
    db_bytes: int
    spool_bytes: int
    spool_instances: int


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (one scan of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: the ppid follows its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def process_sample(pid: int) -> ProcessSample | None:
    """RSS, open fds and threads of ``pid``; None once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return ProcessSample(
        int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"].strip())
    )


def folder_size(folder: Path, inner: str = "instances") -> tuple[int, int]:
    """Bytes of every file under ``folder``, and how many files lie under ``folder/inner``."""
    size = count = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                size += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed by retention meanwhile
                continue
        if Path(root).is_relative_to(folder / inner):
            count += len(files)
    return size, count


def database_bytes(url: str, sessions: sessionmaker[Session]) -> int:
    """The database's size on disk: SQLite's file and its WAL, or PostgreSQL's own figure."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        return sum(
            os.stat(path + suffix).st_size
            for suffix in ("", "-wal", "-shm")
            if os.path.exists(path + suffix)
        )
    with sessions() as session:
        return int(session.scalar(text("SELECT pg_database_size(current_database())")) or 0)


class Sampler:
    """Samples every ``interval`` seconds in a thread until :meth:`stop`.

    Parameters
    ----------
    roots
        Label -> pid of each node process started (its children are sampled too, as
        ``label/child``).
    """

    def __init__(
        self,
        roots: dict[str, int],
        sessions: sessionmaker[Session],
        database_url: str,
        storage_dir: Path,
        start: float,
        interval: float,
    ) -> None:
        self.roots = roots
        self.sessions = sessions
        self.database_url = database_url
        self.storage_dir = storage_dir
        self.start = start
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._queue = QueueCollector(sessions)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def _processes(self) -> dict[str, ProcessSample]:
        found: dict[str, ProcessSample] = {}
        for label, pid in self.roots.items():
            children = [
                (f"{label}/child{'' if n == 0 else n}", c) for n, c in enumerate(_children(pid))
            ]
            for name, member in [(label, pid), *children]:
                sample = process_sample(member)
                if sample is not None:
                    found[name] = sample
        return found

    def sample(self) -> Sample:
        """The node now."""
        gauges = {
            family.name: family.samples[0].value
            for family in self._queue.collect()
            if family.name.startswith(("dicom_node_queue", "dicom_node_oldest"))
        }
        with self.sessions() as session:
            studies = int(session.scalar(select(func.count()).select_from(Study)) or 0)
        spool_bytes, instances = folder_size(self.storage_dir)
        return Sample(
            at=time.monotonic() - self.start,
            processes=self._processes(),
            queue_depth=int(gauges["dicom_node_queue_depth"]),
            oldest_queued_s=float(gauges["dicom_node_oldest_queued_job_age_seconds"]),
            study_rows=studies,
            db_bytes=database_bytes(self.database_url, self.sessions),
            spool_bytes=spool_bytes,
            spool_instances=instances,
        )
