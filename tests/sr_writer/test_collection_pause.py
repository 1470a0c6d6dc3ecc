"""The collector is paused while highdicom's tables load, and back on after, whatever overlaps."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from sr_writer import collection_pause
from sr_writer.collection_pause import collection_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_off_inside_on_after_even_when_the_build_raises() -> None:
    with collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("build failed")
    assert gc.isenabled()


def test_a_collector_the_caller_turned_off_stays_off() -> None:
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()


def test_overlapping_builds_in_two_threads_turn_it_on_once_both_end() -> None:
    first_in, second_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait(5)
        with collection_paused():
            pass
        seen.append(gc.isenabled())  # the first build still runs
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with collection_paused():
        first_in.set()
        second_done.wait(5)
    thread.join(5)
    assert seen == [False]
    assert gc.isenabled() and collection_pause._pauses == 0


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


def test_highdicom_tables_load_with_no_collection_meanwhile_and_stay_frozen() -> None:
    """Loading the module table alone triggers about 290 collections, each walking
    the growing heap, when the collector is on; frozen, later ones skip the tables."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_TABLES], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    assert out[0] == "0"
    assert out[1].strip() == "3 True True"  # loaded, collector back on, tables frozen
