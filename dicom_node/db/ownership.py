"""Who owns running work: an owner id per process, and whether that process still lives.

Jobs and deliveries in state RUNNING carry the owner id of the process working on them
and a lease. Another process reclaims such work only when the lease has expired, or,
faster, when the owner ran on this same host and is provably gone (its pid no longer
exists or now belongs to a process started at another time): a node restarted after a
``kill -9`` picks up its work at once instead of waiting out the lease, while a live
worker on another machine is never robbed.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import cache
from pathlib import Path


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks (field 22 of /proc/PID/stat), Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def process_owner_id() -> str:
    """``host:pid:start`` for this process, stable for its lifetime."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def owner_id(role: str) -> str:
    """An owner id for one worker thread or the delivery loop of this process."""
    return f"{process_owner_id()}:{role}:{threading.get_ident()}"


def owner_is_gone(owner: str | None) -> bool:
    """True only when ``owner`` ran on this host and that process no longer exists.

    An owner on another host, or one this check cannot read, counts as alive: its
    work is reclaimed when its lease expires instead.
    """
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    ticks = _start_ticks(pid)
    if ticks is not None:
        return ticks != parts[2]  # same pid, other start time: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
