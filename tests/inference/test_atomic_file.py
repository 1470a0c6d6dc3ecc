"""The one durable-write rule: a reader sees the old file or the whole new one."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from inference import atomic_write


def test_a_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "result.dcm"
    path.write_bytes(b"old")
    atomic_write(path, lambda handle: handle.write(b"new content"))
    assert path.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["result.dcm"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path: Path) -> None:
    path = tmp_path / "result.dcm"
    path.write_bytes(b"old")

    def half_then_fail(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.dcm"]
