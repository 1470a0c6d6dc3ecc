"""Fixtures shared by every test package."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m dicom_node ARGS`` from the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        timeout=timeout,
    )


# Ports handed out in this process: the kernel may offer a just-closed port again at
# once, and a peer given the same port for two services cannot start (Orthanc's DICOM
# and HTTP ports came out equal in one CI run).
_HANDED_OUT: set[int] = set()


def get_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process
    has not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for each port a test needs."""
    return get_free_port
