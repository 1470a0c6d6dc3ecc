"""The spool's layout and its durable move, including across file systems."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest

from dicom_node.config import parse_config
from dicom_node.intake.spool import Spool
from dicom_node.roles import Role
from dicom_node.service import Service
from tests.node.conftest import node_settings


def test_layout_is_study_series_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert path == tmp_path / "instances" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"


@pytest.mark.parametrize("uid", ["../../etc", "..", "a/b", "1.2\\3", " 1.2 "])
def test_hostile_uids_stay_inside_the_spool(tmp_path: Path, uid: str) -> None:
    spool = Spool(tmp_path)
    path = spool.path_for(uid, uid, uid)
    assert path.resolve().is_relative_to(spool.instances_dir.resolve())
    assert len(path.relative_to(spool.instances_dir).parts) == 3


def test_commit_moves_and_replaces(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    dest = spool.path_for("1", "2", "3")
    for content in (b"first", b"second!"):
        source = spool.incoming_dir / "part.dcm"
        source.write_bytes(content)
        assert spool.commit(source, dest) == len(content)
        assert not source.exists()
    assert dest.read_bytes() == b"second!"


def test_commit_across_file_systems_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    source = tmp_path / "elsewhere.dcm"
    source.write_bytes(b"x" * 3_000_000)
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    dest = spool.path_for("1", "2", "3")
    assert spool.commit(source, dest) == 3_000_000
    assert dest.read_bytes() == b"x" * 3_000_000
    assert not source.exists()
    assert [p.name for p in dest.parent.iterdir()] == ["3.dcm"]  # no temp file left


def test_clear_incoming_removes_only_dead_listeners_transfers(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    host = socket.gethostname()
    dead = spool.incoming_root / f"{host}-{dead_pid()}"
    alive = spool.incoming_root / f"{host}-1"  # init: alive, not ours
    other_host = spool.incoming_root / f"elsewhere-{dead_pid()}"
    for folder in (dead, alive, other_host, spool.incoming_dir):
        folder.mkdir(exist_ok=True)
        (folder / "tmpabc.dcm").write_bytes(b"half")
    assert spool.clear_incoming() == 2
    assert not dead.exists()
    assert list(spool.incoming_dir.iterdir()) == []
    assert (alive / "tmpabc.dcm").exists() and (other_host / "tmpabc.dcm").exists()


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_move_in_renames_a_new_name_and_refuses_an_existing_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    dest = spool.path_for("1", "2", "3")
    source = spool.incoming_dir / "part.dcm"
    source.write_bytes(b"first")
    spool.move_in(source, dest, spool.start_fsync(source)).wait()
    assert dest.read_bytes() == b"first" and not source.exists()
    source.write_bytes(b"again")
    with pytest.raises(FileExistsError):
        spool.move_in(source, dest, spool.start_fsync(source))
    assert dest.read_bytes() == b"first" and source.exists()


@pytest.mark.parametrize(("role", "incoming"), [("worker", False), ("listener", True)])
def test_only_a_receiving_process_makes_an_incoming_folder(
    tmp_path: Path, role: Role, incoming: bool
) -> None:
    service = Service(parse_config(node_settings(tmp_path), "test", tmp_path), role=role)
    try:
        assert service.spool.instances_dir.is_dir()
        assert service.spool.incoming_dir.is_dir() is incoming
    finally:
        service.engine.dispose()
