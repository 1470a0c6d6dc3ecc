"""``serve --role all``: inference in a child process at lower priority, gone with its parent."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.node.conftest import NodeProcess, wait_for

SpawnNode = Callable[..., NodeProcess]


def children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def nice_of(pid: int) -> int:
    """The nice value of ``pid`` (field 19 of /proc/PID/stat)."""
    return int((Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[16])


def cmdline(pid: int) -> list[str]:
    return (Path(f"/proc/{pid}") / "cmdline").read_bytes().decode().split("\0")


def test_inference_runs_in_a_lower_priority_child_that_dies_with_the_node(
    spawn_node: SpawnNode,
) -> None:
    node = spawn_node(worker={"nice": 7})
    parent = node.process.pid
    assert wait_for(lambda: len(children(parent)) == 1, timeout=20)
    (child,) = children(parent)
    command = cmdline(child)
    assert command[command.index("--role") + 1] == "worker"
    assert int(command[command.index("--threads") + 1]) == max(1, (os.cpu_count() or 1) - 1)
    environ = (Path(f"/proc/{child}") / "environ").read_bytes().split(b"\0")
    assert f"OPENBLAS_NUM_THREADS={command[command.index('--threads') + 1]}".encode() in environ
    assert wait_for(lambda: nice_of(child) == nice_of(parent) + 7, timeout=20)
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(timeout=10)
    assert wait_for(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=15)


def _zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_own_process_false_keeps_inference_in_the_node(spawn_node: SpawnNode) -> None:
    node = spawn_node(worker={"own_process": False})
    assert wait_for(lambda: "node started" in node.log(), timeout=20)
    assert children(node.process.pid) == []
