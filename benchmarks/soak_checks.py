"""What the soak run must show: counts from the audit trail, Orthanc and the database.

Retention removes a finished study's rows while the run goes on, so the counts come
from what outlives them: the node's audit trail (instances received per study and
association with their outcome, studies completed, jobs run, results created,
deliveries) and the archive (Orthanc, which ends up holding the results only). The
database and the spool must be empty at the end (retention's bound); the figures over
time (memory, latency, stores) are compared quarter against quarter.

Each check is a :class:`Check`; the invariants (:func:`invariants`) hold on any machine,
the trends (:func:`trends`) are timings, reported and compared on a full-size run only.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.soak_sampler import Sample
from benchmarks.soak_senders import Latency, SendResult
from benchmarks.soak_traffic import Traffic
from dicom_node.db.schema import Delivery, Job, Study, WorkState
from tests.peers import Orthanc

RSS_TOLERANCE = 0.10  # last quarter's peak RSS at most 10% above the first quarter's
"""Memory is compared by each quarter's high-water, not its mean: a worker's resident
size follows the series it is running (a 500-slice CT holds about a gigabyte, a
radiograph nothing), so a quarter's mean measures its traffic mix, and the first
quarter's also the start-up ramp (models loading, the first large series); a leak or
a fragmenting heap shows as a high-water that keeps rising. A lower high-water at the
end (smaller series late in the run) is no leak."""
P99_TOLERANCE = 1.5  # last quarter's p99 C-STORE latency at most 1.5x the first's


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _events(lines: Sequence[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == event]


def senders_check(traffic: Traffic, results: Sequence[SendResult]) -> Check:
    """Every send went through; exactly the bad files were refused, with a failure status."""
    errors = [f"{r.send.kind}: {r.error}" for r in results if r.error]
    refused = [(r.send.kind, status) for r in results for _, status in r.refused]
    bad = [status for kind, status in refused if kind == "bad"]
    wrong = [item for item in refused if item[0] != "bad"] + [
        ("bad", s) for s in bad if not 0xC000 <= s <= 0xCFFF
    ]
    ok = not errors and not wrong and len(bad) == traffic.bad and len(results) == len(traffic.sends)
    detail = (
        f"{len(results)}/{len(traffic.sends)} sends, {len(bad)}/{traffic.bad} bad files refused "
        f"({', '.join(sorted({hex(s) for s in bad}))})"
    )
    if errors or wrong:
        detail += f"; errors {errors[:3]}; unexpected statuses {wrong[:3]}"
    return Check("senders", ok, detail)


def stored_once_check(traffic: Traffic, lines: Sequence[dict[str, Any]]) -> Check:
    """Each valid instance stored once: per study, the audit's new instances equal the
    distinct instances sent; every other C-STORE of it was a duplicate kept or replaced."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for line in _events(lines, "instances-received"):
        outcomes[line["study_uid"]].update(line.get("outcomes", {}))
    wrong = [
        f"{uid}: {outcomes[uid]['new']} new of {len(sops)}"
        for uid, sops in traffic.expected.items()
        if outcomes[uid]["new"] != len(sops)
    ]
    unknown = sorted(set(outcomes) - set(traffic.expected))
    again = sum(c["kept"] + c["replaced"] for c in outcomes.values())
    new = sum(c["new"] for c in outcomes.values())
    expected = sum(map(len, traffic.expected.values()))
    ok = not wrong and not unknown and again == traffic.duplicates
    detail = (
        f"{new}/{expected} instances new, {again}/{traffic.duplicates} duplicates kept, "
        f"{len(traffic.expected)} studies"
    )
    if wrong or unknown:
        detail += f"; wrong {wrong[:3]}; studies never sent {unknown[:3]}"
    return Check("every instance stored once", ok, detail)


def processed_check(traffic: Traffic, lines: Sequence[dict[str, Any]]) -> Check:
    """Every study completed; every routed study's jobs done after its last completion."""
    completed: dict[str, str] = {}
    for line in _events(lines, "study-completed"):
        completed[line["study_uid"]] = max(completed.get(line["study_uid"], ""), line["time"])
    runs = _events(lines, "job-run")
    failed = [line for line in runs if str(line.get("outcome", "")).startswith("failed")]
    done_after = {
        line["study_uid"]
        for line in runs
        if line.get("outcome") == "done" and line["time"] >= completed.get(line["study_uid"], "~")
    }
    incomplete = sorted(set(traffic.expected) - set(completed))
    unprocessed = sorted(traffic.routed_studies() - done_after)
    ok = not incomplete and not unprocessed and not failed
    detail = (
        f"{len(completed)}/{len(traffic.expected)} studies completed, "
        f"{len(traffic.routed_studies()) - len(unprocessed)}/{len(traffic.routed_studies())} "
        f"routed studies processed, {len(runs)} job runs, {len(failed)} failed"
    )
    if not ok:
        detail += f"; not completed {incomplete[:3]}; not processed {unprocessed[:3]}"
    return Check("every study processed", ok, detail)


def delivered_check(lines: Sequence[dict[str, Any]], archive_uids: Counter[str]) -> Check:
    """Each result object created was delivered once (one successful delivery line per
    creation) and the archive holds each result SOP Instance UID once."""
    created = Counter(line["result_sop_uid"] for line in _events(lines, "result-created"))
    deliveries = _events(lines, "delivery")
    done = Counter(line["result_sop_uid"] for line in deliveries if line.get("state") == "done")
    failed = [line for line in deliveries if line.get("state") == "failed"]
    mismatched = sorted(uid for uid in created.keys() | done.keys() if created[uid] != done[uid])
    twice = sorted(uid for uid, count in archive_uids.items() if count > 1)
    missing = sorted(created.keys() - archive_uids.keys())
    extra = sorted(archive_uids.keys() - created.keys())
    ok = bool(created) and not (mismatched or twice or missing or extra or failed)
    detail = (
        f"{sum(created.values())} results created ({len(created)} distinct UIDs), "
        f"{sum(done.values())} delivered, {len(archive_uids)} in the archive, "
        f"{len(failed)} failed deliveries"
    )
    if not ok:
        detail += (
            f"; created != delivered {mismatched[:3]}; twice in archive {twice[:3]}; "
            f"missing {missing[:3]}; not ours {extra[:3]}"
        )
    return Check("every result delivered exactly once", ok, detail)


def archive_sop_uids(pacs: Orthanc) -> Counter[str]:
    """SOP Instance UIDs of every instance Orthanc holds (the node's results, once the
    senders deleted their uploads), with how many instances carry each."""
    found = pacs.rest("POST", "/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
    return Counter(item["MainDicomTags"]["SOPInstanceUID"] for item in found)


def nothing_left_check(sessions: sessionmaker[Session], last: Sample) -> Check:
    """Nothing lost or stuck, and retention emptied the stores: no job or delivery left
    in any state but done or skipped, no study row, no file in the spool (instances,
    outboxes)."""
    with sessions() as session:
        jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        deliveries = dict(
            session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
        )
        studies = int(session.scalar(select(func.count()).select_from(Study)) or 0)
    settled = {WorkState.DONE, WorkState.SKIPPED}
    stuck = {f"job {s}": n for s, n in jobs.items() if s not in settled}
    stuck |= {f"delivery {s}": n for s, n in deliveries.items() if s not in settled}
    ok = not stuck and studies == 0 and last.spool_bytes == 0
    detail = (
        f"left: {studies} study rows, {last.spool_instances} spooled instances, "
        f"{last.spool_bytes / 1e6:.1f} MB spool, {last.db_bytes / 1e6:.1f} MB database"
    )
    if stuck:
        detail += f"; unfinished {stuck}"
    return Check("nothing lost, stores emptied by retention", ok, detail)


def invariants(
    traffic: Traffic,
    results: Sequence[SendResult],
    lines: Sequence[dict[str, Any]],
    archive_uids: Counter[str],
    sessions: sessionmaker[Session],
    last: Sample,
) -> list[Check]:
    """The checks that hold on any machine, at any size."""
    return [
        senders_check(traffic, results),
        stored_once_check(traffic, lines),
        processed_check(traffic, lines),
        delivered_check(lines, archive_uids),
        nothing_left_check(sessions, last),
    ]


def quarters(samples: Sequence[Sample], end: float) -> tuple[list[Sample], list[Sample]]:
    """The samples of the first and of the last quarter of [0, ``end``]."""
    return (
        [s for s in samples if s.at <= end / 4],
        [s for s in samples if 3 * end / 4 <= s.at <= end],
    )


def _mean(samples: Sequence[Sample], value: Callable[[Sample], float]) -> float:
    return statistics.fmean(value(s) for s in samples) if samples else float("nan")


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0.5, 0.99) of ``values`` (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def trends(samples: Sequence[Sample], latencies: Sequence[Latency], end: float) -> list[Check]:
    """Timings over the sending period [0, ``end``]: peak RSS per process and p99
    C-STORE latency, last quarter against first; peak stores, second half against first."""
    first, last = quarters(samples, end)
    checks = []
    for label in sorted({name for s in samples for name in s.processes}):

        def rss(sample: Sample, label: str = label) -> float:
            return sample.processes[label].rss_mb

        early = [s for s in first if label in s.processes]
        late = [s for s in last if label in s.processes]
        before, after = max(map(rss, early), default=0.0), max(map(rss, late), default=0.0)
        ratio = after / before if before else float("inf")
        checks.append(
            Check(
                f"RSS {label} flat",
                ratio <= 1 + RSS_TOLERANCE,
                f"peak {before:.0f} MB first quarter, {after:.0f} MB last ({ratio:.2f}x; "
                f"mean {_mean(early, rss):.0f} and {_mean(late, rss):.0f} MB)",
            )
        )
    early = [x.seconds for x in latencies if x.at <= end / 4]
    late = [x.seconds for x in latencies if x.at >= 3 * end / 4]
    p99 = percentile(late, 0.99) / percentile(early, 0.99)
    checks.append(
        Check(
            "p99 C-STORE latency flat",
            p99 <= P99_TOLERANCE,
            f"{percentile(early, 0.99) * 1000:.0f} ms first quarter, "
            f"{percentile(late, 0.99) * 1000:.0f} ms last ({p99:.2f}x, {len(early)}/{len(late)} "
            "C-STOREs)",
        )
    )
    half = [s for s in samples if s.at <= end / 2], [s for s in samples if end / 2 < s.at <= end]
    for name, value in (("database", lambda s: s.db_bytes), ("spool", lambda s: s.spool_bytes)):
        peaks = [max(map(value, part), default=0) / 1e6 for part in half]
        checks.append(
            Check(
                f"{name} bounded",
                peaks[1] <= 1.5 * peaks[0] + 1,
                f"peak {peaks[0]:.1f} MB first half, {peaks[1]:.1f} MB second half",
            )
        )
    return checks
