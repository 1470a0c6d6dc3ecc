"""How many connections the listener holds, in all and per client address.

A connection takes a slot when it is accepted and gives it back the moment it ends,
whether it became an association or not. The per-address limit keeps one client (or one
attacker) from taking every slot; the total bounds the threads that connections still
negotiating may hold, each for at most the association request timeout.
"""

from __future__ import annotations

import threading
from collections import Counter


class ConnectionSlots:
    """Counts open connections by client address; thread-safe.

    Parameters
    ----------
    per_host
        Connections one address may hold at once (``node.max_associations_per_host``).
    total
        Connections all addresses may hold at once.
    """

    def __init__(self, per_host: int, total: int) -> None:
        if per_host < 1 or total < 1:
            raise ValueError(f"limits must be at least 1, got per_host={per_host} total={total}")
        self.per_host = per_host
        self.total = total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, host: str) -> str | None:
        """Take a slot for ``host``: None when taken, else why not (for the log)."""
        with self._lock:
            if self._open[host] >= self.per_host:
                return f"{self.per_host} connections from this address already open"
            if self._open.total() >= self.total:
                return f"{self.total} connections already open"
            self._open[host] += 1
            return None

    def release(self, host: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        with self._lock:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]

    def open_count(self, host: str | None = None) -> int:
        """Connections open now, from ``host`` or in all."""
        with self._lock:
            return self._open[host] if host is not None else self._open.total()
