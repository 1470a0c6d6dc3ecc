"""The soak run's report: a table over time, the checks, and a PNG plot.

The plot needs matplotlib (``pip install 'dicom-ai-node[bench]'``); :func:`require_matplotlib`
says so before a long run starts rather than after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from benchmarks.soak_checks import Check, percentile
from benchmarks.soak_sampler import Sample
from benchmarks.soak_senders import Latency

ROWS = 12


def require_matplotlib() -> ModuleType:
    """matplotlib's pyplot on the Agg backend.

    Raises
    ------
    SystemExit
        When matplotlib is not installed, with how to install it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "the soak run plots with matplotlib, which is not installed: "
            "pip install 'dicom-ai-node[bench]' (or --no-plot)"
        ) from None
    return plt


def _labels(samples: Sequence[Sample]) -> list[str]:
    return sorted({name for sample in samples for name in sample.processes})


def table(samples: Sequence[Sample], latencies: Sequence[Latency]) -> str:
    """One row per twelfth of the run: memory per process, latency, queue, stores."""
    if not samples:
        return "no samples"
    labels = _labels(samples)
    end = samples[-1].at
    step = end / ROWS or 1.0
    head = (
        f"{'t (s)':>7} "
        + " ".join(f"{'RSS ' + label:>16}" for label in labels)
        + f" {'fds':>5} {'thr':>4} {'p50 ms':>7} {'p99 ms':>7} {'queue':>5} {'oldest s':>8}"
        + f" {'studies':>7} {'DB MB':>7} {'spool MB':>8} {'spooled':>7}"
    )
    rows = [head]
    for index in range(ROWS):
        low, high = index * step, (index + 1) * step
        part = [s for s in samples if low <= s.at < high or (index == ROWS - 1 and s.at == end)]
        if not part:
            continue
        last = part[-1]
        window = [x.seconds * 1000 for x in latencies if low <= x.at < high]
        rss = " ".join(
            f"{max((s.processes[n].rss_mb for s in part if n in s.processes), default=0):16.0f}"
            for n in labels
        )
        rows.append(
            f"{high:7.0f} {rss} {sum(p.fds for p in last.processes.values()):5d} "
            f"{sum(p.threads for p in last.processes.values()):4d} "
            f"{percentile(window, 0.5):7.1f} {percentile(window, 0.99):7.1f} "
            f"{max(s.queue_depth for s in part):5d} {max(s.oldest_queued_s for s in part):8.0f} "
            f"{last.study_rows:7d} {max(s.db_bytes for s in part) / 1e6:7.1f} "
            f"{max(s.spool_bytes for s in part) / 1e6:8.1f} {last.spool_instances:7d}"
        )
    return "\n".join(rows)


def checks_text(checks: Sequence[Check]) -> str:
    return "\n".join(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in checks)


def plot(
    path: Path, samples: Sequence[Sample], latencies: Sequence[Latency], sending_end: float
) -> None:
    """Six panels over time: RSS per process, C-STORE latency, queue, database, spool,
    fds and threads; a dashed line where the senders finished."""
    plt = require_matplotlib()
    figure, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    times = [s.at for s in samples]

    def series(axis: object, value: Callable[[Sample], float], label: str) -> None:
        axis.plot(times, [value(s) for s in samples], label=label)  # type: ignore[attr-defined]

    rss, latency, queue, database, spool, handles = axes.flat
    for name in _labels(samples):
        rss.plot(
            [s.at for s in samples if name in s.processes],
            [s.processes[name].rss_mb for s in samples if name in s.processes],
            label=name,
        )
    rss.set_ylabel("RSS (MB)")
    latency.scatter(
        [x.at for x in latencies], [x.seconds * 1000 for x in latencies], s=4, label="C-STORE"
    )
    latency.set_ylabel("C-STORE latency (ms)")
    series(queue, lambda s: s.queue_depth, "queued jobs")
    series(queue, lambda s: s.oldest_queued_s, "oldest queued job (s)")
    series(database, lambda s: s.db_bytes / 1e6, "database (MB)")
    series(database, lambda s: s.study_rows, "study rows")
    series(spool, lambda s: s.spool_bytes / 1e6, "spool (MB)")
    series(spool, lambda s: s.spool_instances, "spooled instances")
    series(handles, lambda s: sum(p.fds for p in s.processes.values()), "open fds")
    series(handles, lambda s: sum(p.threads for p in s.processes.values()), "threads")
    for axis in axes.flat:
        axis.axvline(sending_end, color="grey", linestyle="--", linewidth=0.8)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("seconds")
    figure.suptitle("dicom-node soak run (dashed: senders done)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
