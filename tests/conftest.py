"""Fixtures shared by every test package."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
