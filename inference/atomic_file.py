"""Writing a file so that a crash never leaves it half-written: temp name, fsync, rename.

The one durable-write rule of the project: TensorRT engines here, and the node's result
files and spooled instances (exported for `dicom_node` by the package). A reader of
``path`` sees the old file or the whole new one, never a part; after a crash at most a
hidden ``.NAME.*.part`` temp file is left beside it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or create in the folder ``path`` durable.

    Raises
    ------
    OSError
        When the folder cannot be opened or the disk reports an error.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, sync_dir: bool = True) -> None:
    """Write ``path`` through ``write(handle)`` into a temp file beside it, fsync it, and
    rename it over ``path``; then fsync the folder.

    Parameters
    ----------
    path
        The file to (re)write; its folder must exist.
    write
        Writes the content to the binary handle it is given.
    sync_dir
        False when the caller writes many files into one folder and fsyncs the folder
        once after the last (`fsync_dir`).

    Raises
    ------
    OSError
        When the disk is full or not writable; ``path`` is then unchanged and the temp
        file removed. Whatever ``write`` raises propagates the same way.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
