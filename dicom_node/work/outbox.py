"""The outbox: result objects on disk until every destination has them.

Results of job ``N`` live under ``storage_dir/outbox/N/<SOP Instance UID>.dcm``. Each
file is written with `inference.atomic_write` (temp name, fsync, rename), and its folder
fsynced, before the job and its deliveries are committed, so that a delivery row never
points at a file that a crash could have left half-written. A retried job rewrites the
same names.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset

from inference import atomic_write, fsync_dir


@dataclass(frozen=True)
class OutboxFile:
    """One written result: where it is and what it is."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str


def _save(dataset: Dataset, handle: BinaryIO) -> None:
    dataset.save_as(handle, enforce_file_format=True)


class Outbox:
    """Result files per job under ``storage_dir/outbox``.

    Parameters
    ----------
    storage_dir
        The node's ``storage_dir``.
    """

    def __init__(self, storage_dir: Path) -> None:
        self.root = Path(storage_dir) / "outbox"

    def job_dir(self, job_id: int) -> Path:
        """The folder of one job's results."""
        return self.root / str(job_id)

    def write(self, job_id: int, datasets: Sequence[Dataset]) -> list[OutboxFile]:
        """Write each dataset durably as a DICOM file (with its file meta) for ``job_id``.

        Raises
        ------
        OSError
            When the disk is full or not writable; files written before stay (the job
            is retried and rewrites them).
        ValueError
            When a dataset has no SOP Instance UID or SOP Class UID.
        """
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for dataset in datasets:
            sop_uid = str(dataset.get("SOPInstanceUID", ""))
            sop_class = str(dataset.get("SOPClassUID", ""))
            if not sop_uid or not sop_class:
                raise ValueError(f"result for job {job_id} lacks SOPInstanceUID or SOPClassUID")
            path = folder / f"{sop_uid}.dcm"
            atomic_write(path, functools.partial(_save, dataset), sync_dir=False)
            written.append(OutboxFile(path, sop_uid, sop_class))
        fsync_dir(folder)
        return written

    def remove_job(self, job_id: int) -> bool:
        """Delete a job's result files; True when there was a folder to delete."""
        folder = self.job_dir(job_id)
        if not folder.exists():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
