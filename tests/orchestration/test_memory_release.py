"""A finished job's memory goes back to the operating system (the worker's resident
size follows the series it runs, not the largest one it ever ran)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.work import worker as worker_module
from dicom_node.work.memory_release import release_freed_memory
from dicom_node.work.model_cache import ModelCache
from dicom_node.work.routing import route_complete_studies
from dicom_node.work.worker import Worker
from tests.orchestration.studies import ct_series
from tests.orchestration.test_worker import add_files, config, models  # noqa: F401 - fixtures

# A fresh interpreter fragments its heap the way a job does: many slice-sized blocks
# (below glibc's mmap threshold, so they come from the heap), each followed by a small
# block that stays (above pymalloc's 512 bytes, so also from the heap), then frees the
# large ones. The heap's top cannot shrink past the small blocks: without malloc_trim
# all 200 MB stay resident (measured: 204 MB before and after; with it, 20 MB).
FRAGMENT = """
import sys
from dicom_node.work.memory_release import release_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

large, small = [], []
for _ in range(2000):
    large.append(bytearray(100_000))
    small.append(bytearray(1000))
del large
before = rss_mb()
released = release_freed_memory()
print(released, before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, glibc's malloc")
def test_freed_heap_pages_go_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True
    ).stdout.split()
    released, before, after = out[0] == "True", float(out[1]), float(out[2])
    assert released
    assert before - after > 150, f"RSS {before:.0f} MB before, {after:.0f} MB after"


def test_the_worker_releases_memory_after_every_job_done_or_failed(
    sessions: sessionmaker[Session],
    config: NodeConfig,  # noqa: F811 - the fixture
    models: ModelCache,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(
        worker_module, "release_freed_memory", lambda: calls.append(release_freed_memory())
    )
    good = ct_series(tmp_path / "good", 2)
    add_files(sessions, good)
    bad = ct_series(tmp_path / "bad", 2)
    add_files(sessions, bad)
    bad[0].unlink()  # this job fails
    route_complete_studies(sessions, config)
    worker = Worker(config, sessions, models)
    assert worker.run_once("w1") and worker.run_once("w1")
    assert calls == [True, True]
