"""highdicom's tables load with the collector paused, then stay frozen; the collector
is back on after, unless the caller had turned it off."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from sr_writer import iod_lookup

# A fresh interpreter: highdicom's tables are loaded once per process.
LOAD_TABLES = """
import gc
from highdicom import _standard_utils
from sr_writer.iod_lookup import TABLE_LOADERS, load_standard_tables

def tables_loaded():
    return sum(getattr(_standard_utils, name).cache_info().currsize for name in TABLE_LOADERS)

during = []  # collections that started before every table had loaded
gc.collect()  # counts from zero: no collection is due as the pause begins
gc.callbacks.append(lambda phase, _: phase == "start" and tables_loaded() < 3 and during.append(1))
load_standard_tables()
gc.callbacks.clear()
print(len(during), tables_loaded(), gc.isenabled(), gc.get_freeze_count() > 100_000)
"""

CALLER_TURNED_IT_OFF = """
import gc
from sr_writer.iod_lookup import load_standard_tables

gc.disable()
load_standard_tables()
print(gc.isenabled())
"""


def run_fresh(script: str) -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()


def test_highdicom_tables_load_with_no_collection_meanwhile_and_stay_frozen() -> None:
    """Loading the module table alone triggers about 290 collections, each walking
    the growing heap, when the collector is on; frozen, later ones skip the tables."""
    # loaded, collector back on, tables frozen
    assert run_fresh(LOAD_TABLES) == ["0", "3", "True", "True"]


def test_a_collector_the_caller_turned_off_stays_off() -> None:
    assert run_fresh(CALLER_TURNED_IT_OFF) == ["False"]


def test_the_collector_is_back_on_when_loading_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("table missing")

    monkeypatch.setattr(iod_lookup._standard_utils, iod_lookup.TABLE_LOADERS[0], broken)
    gc.enable()
    with pytest.raises(RuntimeError, match="table missing"):
        iod_lookup.load_standard_tables()
    assert gc.isenabled()
