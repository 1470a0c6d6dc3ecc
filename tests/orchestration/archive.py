"""A scriptable archive for delivery tests: a pynetdicom Storage SCP in the test process.

It records every C-STORE it receives (SOP Instance UID -> number of receipts), can
answer a chosen status instead of Success, and can hold C-STOREs at a gate, so that a
test can kill the node while a delivery is in flight.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from tests.conftest import get_free_port

GATE_TIMEOUT_S = 120.0


@dataclass
class Archive:
    """What the archive received, and how it answers."""

    ae_title: str
    port: int
    receipts: Counter[str] = field(default_factory=Counter)
    status: int = 0x0000
    gate: threading.Event = field(default_factory=threading.Event)
    waiting: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    associations: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    def handle_store(self, event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            self.receipts[uid] += 1  # stored before answering, like a real archive
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(GATE_TIMEOUT_S)
        return self.status

    def handle_accepted(self, event: Event) -> None:
        with self.lock:
            self.associations += 1

    def stored(self) -> set[str]:
        with self.lock:
            return set(self.receipts) if self.status == 0 else set()


@contextmanager
def run_archive(ae_title: str = "ARCHIVE") -> Iterator[Archive]:
    """Start the archive on a free loopback port; always shut it down."""
    archive = Archive(ae_title, get_free_port())
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    server = ae.start_server(
        ("127.0.0.1", archive.port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, archive.handle_store),
            (evt.EVT_ACCEPTED, archive.handle_accepted),
        ],
    )
    try:
        yield archive
    finally:
        archive.gate.set()
        server.shutdown()
