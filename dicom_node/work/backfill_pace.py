"""Pacing a backfill's retrievals so that the archive's daytime traffic does not suffer.

A token bucket that holds one token and earns ``per_minute`` tokens a minute: each study
retrieval takes one, so retrievals start at most ``per_minute`` times a minute, evenly
spaced, whatever their size; a study that took longer than the spacing to fetch leaves
no debt, and time spent on studies that need no retrieval (already present, no route)
counts towards the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StudyPacer:
    """Spaces study retrievals ``60 / per_minute`` seconds apart (None: no limit).

    Parameters
    ----------
    per_minute
        Studies per minute, > 0; None for as fast as the archive answers.
    clock, sleep
        ``time.monotonic`` and ``time.sleep`` (tests pass fakes).

    Raises
    ------
    ValueError
        When ``per_minute`` is not positive.
    """

    def __init__(
        self,
        per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute is not None and per_minute <= 0:
            raise ValueError(
                f"the rate must be a positive number of studies per minute: {per_minute}"
            )
        self.interval = 0.0 if per_minute is None else 60.0 / per_minute
        self.clock = clock
        self.sleep = sleep
        self._next: float | None = None

    def wait(self) -> float:
        """Return when the next retrieval may start; the seconds waited."""
        now = self.clock()
        waited = 0.0
        if self._next is not None and now < self._next:
            waited = self._next - now
            self.sleep(waited)
            now = self._next
        self._next = now + self.interval
        return waited
