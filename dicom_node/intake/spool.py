"""The spool: received instances on disk, laid out by study, series and instance UID.

A file enters the spool only whole and durable: its data is fsynced, then it is renamed
into place and the folder is fsynced, so that after a crash a path in the spool is
either absent or complete. Incoming C-STORE data is written by pynetdicom into
``incoming/`` on the same file system, which makes the final step a rename, not a copy.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")
_COPY_CHUNK = 1 << 20


def _component(uid: str) -> str:
    """A UID made safe as one path component (UIDs are digits and dots; senders vary)."""
    safe = _UNSAFE.sub("_", uid.strip())
    return safe if safe.strip(".") else "_" + safe


def fsync_file(path: Path) -> int:
    """Make the data of the file at ``path`` durable; its size in bytes.

    Raises
    ------
    OSError
        When the file cannot be opened or the disk reports an error.
    """
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
        return os.fstat(handle.fileno()).st_size


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PendingSync:
    """A file renamed into the spool whose data and folder entry are being fsynced."""

    syncs: tuple[Future[Any], ...]

    def wait(self) -> None:
        """Return once the file is durable under its spool name.

        Raises
        ------
        OSError
            When the disk reported an error for either fsync.
        """
        for sync in self.syncs:
            sync.result()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


class Spool:
    """Instances under ``root/instances/<study>/<series>/<sop>.dcm``; transfers in progress
    under ``root/incoming/<host>-<pid>/``, one folder per listener process, so that
    listeners sharing a spool never clear each other's.

    Parameters
    ----------
    storage_dir
        The node's ``storage_dir``; created if missing.
    receives
        False in a process that never receives (the worker role, its inference child):
        no ``incoming/`` folder of its own, which no listener would clear until it
        restarts.
    """

    def __init__(self, storage_dir: Path, receives: bool = True) -> None:
        self.root = Path(storage_dir)
        self.instances_dir = self.root / "instances"
        self.incoming_root = self.root / "incoming"
        self.incoming_dir = self.incoming_root / f"{socket.gethostname()}-{os.getpid()}"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        if receives:
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self._fsync_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="spool-fsync")

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; UIDs are sanitised so that none escapes the spool."""
        return (
            self.instances_dir
            / _component(study_uid)
            / _component(series_uid)
            / f"{_component(sop_instance_uid)}.dcm"
        )

    def free_bytes(self) -> int:
        """Free space on the spool's file system, for the configured floor."""
        return shutil.disk_usage(self.root).free

    def clear_incoming(self) -> int:
        """Remove transfers left by dead listener processes of this host (and any files
        of ours); never answered Success, so safe. Other hosts' folders are theirs.
        """
        removed = 0
        host = socket.gethostname()
        for folder in self.incoming_root.iterdir():
            owner, _, pid = folder.name.rpartition("-")
            if not folder.is_dir() or owner != host or not pid.isdigit():
                continue
            if folder == self.incoming_dir or not _process_alive(int(pid)):
                for path in folder.iterdir():
                    path.unlink(missing_ok=True)
                    removed += 1
                if folder != self.incoming_dir:
                    folder.rmdir()
        if removed:
            logger.info("removed unfinished incoming files", extra={"count": removed})
        return removed

    def start_fsync(self, path: Path) -> Future[None]:
        """Start making the data of the file at ``path`` durable, in the background.

        The listener starts this as soon as a transfer is complete, so that the disk
        works while the headers are parsed; the file may be renamed meanwhile (the
        descriptor is opened here).

        Raises
        ------
        OSError
            When the file cannot be opened.
        """
        fd = os.open(path, os.O_RDONLY)
        return self._fsync_pool.submit(_fsync_and_close, fd)

    def move_in(self, source: Path, dest: Path, data_sync: Future[None]) -> PendingSync:
        """Rename a complete file to a new spool name ``dest`` whose data is being
        fsynced (``data_sync``, from :meth:`start_fsync`), and start fsyncing the folder.

        The caller writes its database row meanwhile and waits before committing it.
        Renaming before the data is durable is safe because no row names ``dest`` yet:
        after a crash before the commit, the sender was not answered and sends again,
        and the instance is then stored over it.

        Raises
        ------
        FileExistsError
            When ``dest`` exists: a resent instance, which :meth:`commit` replaces.
        OSError
            When the file cannot be moved (permissions, disk full on a copy across file
            systems); ``dest`` is then absent.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "already in the spool", str(dest))
        try:
            os.rename(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_then_replace(source, dest)  # durable before it is renamed
            source.unlink(missing_ok=True)
        return PendingSync((data_sync, self._fsync_pool.submit(fsync_dir, dest.parent)))

    def commit(self, source: Path, dest: Path) -> int:
        """Move a complete file into the spool at ``dest`` durably; its size in bytes.

        For a ``dest`` that may exist (a replaced duplicate): ``source`` is fsynced, then
        renamed over it atomically, then the folder is fsynced. On another file system
        ``source`` is copied to a temp file beside ``dest`` in chunks, so memory stays
        flat.

        Raises
        ------
        OSError
            When the file cannot be written (disk full, permissions); ``dest`` is then
            unchanged.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = fsync_file(source)
        try:
            os.replace(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_then_replace(source, dest)
            source.unlink(missing_ok=True)
        fsync_dir(dest.parent)
        return size

    @staticmethod
    def _copy_then_replace(source: Path, dest: Path) -> None:
        """Copy ``source`` over ``dest`` across file systems, durably, in chunks (memory
        stays flat); the caller fsyncs the folder."""
        with source.open("rb") as src:
            atomic_write(
                dest, lambda out: shutil.copyfileobj(src, out, _COPY_CHUNK), sync_dir=False
            )
