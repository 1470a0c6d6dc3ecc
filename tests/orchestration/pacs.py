"""Reading results back from Orthanc through its REST API, for the end-to-end tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset

from tests.peers import ORTHANC, Orthanc, PeerError, stop_process, wait_for_port

DCIODVFY = Path("/usr/bin/dciodvfy")


def study_id(pacs: Orthanc, study_uid: str) -> str | None:
    found = pacs.rest("POST", "/tools/lookup", study_uid.encode())
    ids = [item["ID"] for item in found or [] if item["Type"] == "Study"]
    return ids[0] if ids else None


def series_by_modality(pacs: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Modality -> Orthanc instance ids in that study (empty when the study is unknown)."""
    identifier = study_id(pacs, study_uid)
    if identifier is None:
        return {}
    result: dict[str, list[str]] = {}
    for series in pacs.rest("GET", f"/studies/{identifier}/series"):
        modality = series["MainDicomTags"].get("Modality", "")
        result.setdefault(modality, []).extend(series["Instances"])
    return result


def instance(pacs: Orthanc, instance_id: str, folder: Path) -> tuple[Path, Dataset]:
    """Download one instance as a file; its path and dataset."""
    data = pacs.rest("GET", f"/instances/{instance_id}/file")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{instance_id}.dcm"
    path.write_bytes(data)
    return path, pydicom.dcmread(path)


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of ``dciodvfy -new`` for a file."""
    run = subprocess.run(
        [str(DCIODVFY), "-new", str(path)], capture_output=True, text=True, check=False
    )
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def referenced_series(dataset: Dataset) -> set[str]:
    """Series UIDs an SR or SEG references as its evidence or source."""
    uids: set[str] = set()
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "ReferencedSeriesSequence"):
        for item in dataset.get(keyword, []):
            uids.add(str(item.get("SeriesInstanceUID", "")))
            for series in item.get("ReferencedSeriesSequence", []):
                uids.add(str(series.SeriesInstanceUID))
    uids.discard("")
    return uids


def counts(pacs: Orthanc) -> dict[str, Any]:
    return dict(pacs.rest("GET", "/statistics"))


@contextmanager
def outage(pacs: Orthanc) -> Iterator[Callable[[], None]]:
    """Stop Orthanc now; the yielded function starts it again on the same ports and
    storage. The restarted process is always stopped when the ``with`` ends (the
    fixture that started Orthanc only knows the first process)."""
    stop_process(pacs.process)
    restarted: list[subprocess.Popen[bytes]] = []

    def restart() -> None:
        with (pacs.root / "orthanc.log").open("ab") as log:
            process = subprocess.Popen(
                [str(ORTHANC), str(pacs.root / "orthanc.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        restarted.append(process)
        pacs.process = process
        wait_for_port(pacs.http_port, process, 30.0)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            try:
                pacs.rest("GET", "/system", timeout=1.0)
                return
            except (PeerError, OSError):
                time.sleep(0.1)
        raise PeerError("Orthanc did not come back after the outage")

    try:
        yield restart
    finally:
        for process in restarted:
            stop_process(process)
