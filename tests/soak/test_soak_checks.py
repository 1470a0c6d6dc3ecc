"""The soak run's traffic plan and checks, on synthetic audit lines and samples: each
check passes on a faithful run and names what a faulty one did wrong."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pydicom

from benchmarks.soak_checks import (
    delivered_check,
    percentile,
    processed_check,
    stored_once_check,
    trends,
)
from benchmarks.soak_sampler import ProcessSample, Sample
from benchmarks.soak_senders import Latency
from benchmarks.soak_traffic import MODALITY, ORTHANC, STORESCU, Traffic, plan_traffic

T0 = "2026-12-04T10:00:0"


def line(event: str, second: int, **fields: Any) -> dict[str, Any]:
    return {"event": event, "time": f"{T0}{second}+00:00", **fields}


def test_the_plan_sends_each_instance_once_plus_duplicates_and_bad_files(tmp_path: Path) -> None:
    traffic = plan_traffic(tmp_path, 300, ct_slices=(20, 40), split_gap=7.0, rate=50.0)

    by_kind: dict[str, list[str]] = {}
    for send in traffic.sends:
        uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in send.files]
        by_kind.setdefault(send.kind, []).extend(uids)
    originals = [
        uid for kind, uids in by_kind.items() if kind not in ("duplicates", "bad") for uid in uids
    ]
    assert sorted(originals) == sorted(uid for sops in traffic.expected.values() for uid in sops)
    assert len(by_kind["duplicates"]) == traffic.duplicates >= 3
    for index, send in enumerate(traffic.sends):  # each repeats the send just before it
        if send.kind == "duplicates":
            assert set(send.files) <= set(traffic.sends[index - 1].files)
    assert len(by_kind["bad"]) == traffic.bad >= 2
    assert traffic.instances == 300
    assert {s.sender for s in traffic.sends} == {ORTHANC, STORESCU, MODALITY}
    assert [s.at for s in traffic.sends] == sorted(s.at for s in traffic.sends)
    [first] = [s for s in traffic.sends if s.kind == "split part 1"]
    [second] = [s for s in traffic.sends if s.kind == "split part 2"]
    assert second.at == first.at + 7.0
    assert set(traffic.modality.values()) == {"CT", "CR", "MR"}


def test_stored_once_names_a_study_whose_new_instances_were_counted_as_kept() -> None:
    traffic = Traffic(expected={"1.2.3": {"1.2.3.1", "1.2.3.2"}}, duplicates=1)
    faithful = [
        line("instances-received", 1, study_uid="1.2.3", outcomes={"new": 2}),
        line("instances-received", 2, study_uid="1.2.3", outcomes={"kept": 1}),
    ]
    overwritten = [line("instances-received", 1, study_uid="1.2.3", outcomes={"new": 1, "kept": 2})]

    assert stored_once_check(traffic, faithful).ok
    check = stored_once_check(traffic, overwritten)
    assert not check.ok
    assert "1.2.3: 1 new of 2" in check.detail


def test_a_job_done_before_the_study_completed_again_leaves_it_unprocessed() -> None:
    traffic = Traffic(expected={"1.2.3": {"1.2.3.1"}}, modality={"1.2.3": "CT"})
    first = [
        line("study-completed", 1, study_uid="1.2.3"),
        line("job-run", 2, study_uid="1.2.3", outcome="done"),
    ]
    reopened = [*first, line("study-completed", 3, study_uid="1.2.3")]

    assert processed_check(traffic, first).ok
    assert not processed_check(traffic, reopened).ok
    assert not processed_check(
        traffic, [*first, line("job-run", 4, study_uid="1.2.3", outcome="failed (failed)")]
    ).ok


def test_delivered_exactly_once_fails_on_a_second_delivery_or_a_result_missing_at_the_archive() -> (
    None
):
    created = [
        line("result-created", 1, job_id=1, result_sop_uid="1.9.1"),
        line("result-created", 1, job_id=1, result_sop_uid="1.9.2"),
    ]
    delivered = [line("delivery", 2, result_sop_uid=u, state="done") for u in ("1.9.1", "1.9.2")]
    archive = Counter({"1.9.1": 1, "1.9.2": 1})

    assert delivered_check([*created, *delivered], archive).ok
    twice = [*created, *delivered, line("delivery", 3, result_sop_uid="1.9.2", state="done")]
    assert "created != delivered ['1.9.2']" in delivered_check(twice, archive).detail
    assert not delivered_check([*created, *delivered], Counter({"1.9.1": 1})).ok
    assert not delivered_check([], Counter()).ok  # a run that made no result proves nothing


def sample(at: float, rss: float, db: int = 1_000_000, spool: int = 1_000_000) -> Sample:
    return Sample(at, {"all": ProcessSample(rss, 30, 20)}, 0, 0.0, 0, db, spool, 0)


def test_trends_flag_memory_that_creeps_and_a_spool_that_keeps_growing() -> None:
    latencies = [Latency(t, 0.02) for t in range(100)]
    flat = [sample(t, 200.0) for t in range(100)]
    creeping = [sample(t, 200.0 + t, spool=1_000_000 * (t + 1)) for t in range(100)]

    assert all(check.ok for check in trends(flat, latencies, 100.0))
    failed = {check.name for check in trends(creeping, latencies, 100.0) if not check.ok}
    assert failed == {"RSS all flat", "spool bounded"}


def test_rss_warming_up_or_following_the_series_size_is_no_creep() -> None:
    """A worker ramps up in its first minutes (models, the first large series), then
    its resident size rises and falls with each series: neither is a leak. A
    high-water that keeps rising is."""
    latencies = [Latency(t, 0.02) for t in range(100)]
    ramp_then_jobs = [
        sample(t, 300.0 + 10 * t if t < 10 else (2000.0 if t % 7 else 900.0)) for t in range(100)
    ]
    smaller_late = [sample(t, 2000.0 if t < 50 else 1200.0) for t in range(100)]
    rising_peaks = [sample(t, 900.0 + (t % 7 == 0) * (1500.0 + 10 * t)) for t in range(100)]

    assert all(check.ok for check in trends(ramp_then_jobs, latencies, 100.0))
    assert all(check.ok for check in trends(smaller_late, latencies, 100.0))
    failed = [c for c in trends(rising_peaks, latencies, 100.0) if not c.ok]
    assert [c.name for c in failed] == ["RSS all flat"]
    assert failed[0].detail.startswith("peak 2610 MB first quarter, 3380 MB last (1.30x")


def test_percentile_is_nearest_rank() -> None:
    assert percentile([0.01] * 98 + [1.0, 2.0], 0.99) == 2.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
