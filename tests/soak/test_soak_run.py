"""The soak run's short variant in CI: its invariants, never its timings.

600 instances from Orthanc, ``storescu`` and a modality at once (CT series, a split
study, radiographs, an MR study, duplicates, bad files) through a node running as a
real process with the demo models and retention of a few seconds: every instance is
stored once, every study processed, every result delivered exactly once to Orthanc,
nothing is left queued, and retention empties the database and the spool.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import SHORT, run_soak
from benchmarks.soak_report import checks_text
from tests.peers import have_dcmtk, have_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not (have_orthanc() and have_dcmtk()), reason="needs Orthanc and DCMTK"),
]


@pytest.mark.timeout(900)
def test_short_soak_run_stores_processes_and_delivers_everything_once(tmp_path: Path) -> None:
    outcome = run_soak(tmp_path, SHORT, log=lambda _: None)

    failed = [check for check in outcome.invariants if not check.ok]
    assert not failed, checks_text(outcome.invariants)
    kinds = {send.kind for send in outcome.traffic.sends}
    assert {"ct", "split part 1", "split part 2", "radiograph", "mr", "duplicates", "bad"} <= kinds
    assert {"all", "all/child"} <= set(outcome.samples[-2].processes)
