"""The free-disk floor checked when a C-STORE transfer starts, not only when it ends.

pynetdicom opens a temp file in ``incoming/`` when a C-STORE request's command arrives,
before its data set. :class:`TransferSpace` opens that file instead: with free space
below ``node.min_free_disk_mb`` at that moment, it hands pynetdicom a file that keeps
nothing, so a large instance sent to a full node fills no disk; the store handler then
answers Out of Resources (0xA700), as it does for a floor crossed during the transfer.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dicom_node.intake.spool import Spool
from dicom_node.net.pynetdicom_internals import receive_into_files

# Paths of discarded transfers whose association ended before they were answered are
# never asked about; forget them all past this many.
_REMEMBERED = 10_000


class _DiscardedTransfer:
    """pynetdicom's view of a temp file (``name``, ``write``, ``file.flush``, ``close``)
    over an empty one: the data written to it is dropped."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.name: str = handle.name
        self.file = self

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._handle.close()


class TransferSpace:
    """Opens the temp file of each incoming C-STORE data set, minding the floor.

    Parameters
    ----------
    spool
        The spool whose file system holds ``incoming/``.
    min_free_bytes
        Below this much free space a transfer that starts is not kept.
    """

    def __init__(self, spool: Spool, min_free_bytes: int) -> None:
        self.spool = spool
        self.min_free_bytes = min_free_bytes
        self._discarded: set[str] = set()

    def open_transfer(self, **kwargs: Any) -> Any:
        """``tempfile.NamedTemporaryFile(**kwargs)`` in the spool's ``incoming/`` folder
        (unless ``dir`` says otherwise), or one that keeps nothing when the free space is
        below the floor (remembered for :meth:`was_discarded`)."""
        kwargs.setdefault("dir", self.spool.incoming_dir)
        handle = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 (pynetdicom closes it)
        if self.spool.free_bytes() >= self.min_free_bytes:
            return handle
        if len(self._discarded) >= _REMEMBERED:
            self._discarded.clear()
        self._discarded.add(handle.name)
        return _DiscardedTransfer(handle)

    def was_discarded(self, path: Path) -> bool:
        """Whether the transfer received into ``path`` was dropped for lack of space."""
        if not self._discarded:  # the usual case: one truth test per instance
            return False
        try:
            self._discarded.remove(str(path))
        except KeyError:
            return False
        return True

    @contextmanager
    def installed(self) -> Iterator[None]:
        """pynetdicom streams C-STORE data sets into files from :meth:`open_transfer`
        meanwhile."""
        with receive_into_files(self.open_transfer):
            yield
