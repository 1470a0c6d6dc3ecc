"""Log lines that a network peer cannot forge, flood, or fill with patient names.

AE titles, UIDs, patient names and exception texts arrive from the network; written raw,
a newline in one of them starts a line that looks like the node's own. Every value is
escaped here before it reaches the log (:func:`escape_control`), so one event is always
one line. :class:`PerClientThrottle` keeps a client that connects in a loop from writing
a line per attempt, and :class:`PersonNameWarningFilter` keeps highdicom's warning about
single-component person names, which quotes the name, below WARNING.
"""

from __future__ import annotations

import logging
import re
import threading
import time

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: everything a
# terminal or a log viewer may take as the end of a line or as a command.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``).

    Backslashes are left as they are: an escape in the output is ambiguous with a
    literal one, which is harmless, while a raw control character never gets through.
    """
    return _CONTROL.sub(_escaped, text)


# highdicom.valuerep.check_person_name: 'The string "DOE" is unlikely to represent ...'
_PERSON_NAME_WARNING = "is unlikely to represent the intended person name"


class PersonNameWarningFilter(logging.Filter):
    """Demote highdicom's single-component person name warning to DEBUG.

    The warning quotes the name, and patient names never appear above DEBUG. Installed
    on the ``py.warnings`` logger, which carries warnings once the entry point calls
    ``logging.captureWarnings(True)``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass other records; lower the person-name warning to DEBUG, or drop it above."""
        if _PERSON_NAME_WARNING not in record.getMessage():
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class PerClientThrottle:
    """At most one log line per client and event every ``interval`` seconds.

    A hostile or broken client may connect thousands of times a second; each refusal
    still happens, but the log gets the first one and then one line per interval that
    says how many were not logged.

    Parameters
    ----------
    interval
        Seconds between two lines for the same client and event.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        # (event, client) -> (when the last line was written, events not logged since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def admit(self, event: str, client: str) -> int | None:
        """None: do not log this one; else log it, saying how many were not logged."""
        key = (event, client)
        now = time.monotonic()
        with self._lock:
            last, skipped = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._seen[key] = (last, skipped + 1)
                return None
            if len(self._seen) > 10_000:  # many clients: forget the old ones
                self._seen.clear()
            self._seen[key] = (now, 0)
            return skipped
