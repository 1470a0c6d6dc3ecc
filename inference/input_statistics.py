"""What the network saw, in a few numbers: intensity quantiles and foreground fraction
of a series' preprocessed input.

Drift monitoring compares them with a package's reference profile: a new
reconstruction kernel, a contrast protocol, a changed rescale or a smaller field of
view moves them even where every header attribute stays the same, and they are
taken after preprocessing, on exactly what the network ran on. They are computed
on a strided subsample of each input array (`SAMPLE_PER_INPUT` values, taken
without copying the array), thinned to `SAMPLE_PER_SERIES` values for the series,
so that they cost little beside the network (about 40 ms for 300 inputs of
256 x 256 on a loaded 2-core machine, most of it the strided reads).

The foreground is what lies above the input's background level: more than
`FOREGROUND_LEVEL` of the way from its 1st to its 99th percentile. Background (air,
outside the field of view) is the lowest value after any of the packages'
normalisations (window, z-score, min-max), so the fraction means the same for
all of them, which a fixed cut such as MONAI's ``x > 0`` would not.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

QUANTILES = {"intensity_p5": 5.0, "intensity_p50": 50.0, "intensity_p95": 95.0}
FOREGROUND = "foreground_fraction"
INPUT_STATISTICS = (*QUANTILES, FOREGROUND)
SAMPLE_PER_INPUT = 4096
SAMPLE_PER_SERIES = 65536
FOREGROUND_LEVEL = 0.05


def _subsample(array: npt.NDArray[np.generic], size: int) -> npt.NDArray[np.float32]:
    """About ``size`` values: every ``step``-th in memory order, ``step`` coprime with the
    row length so that the sample runs over every column rather than down a few."""
    step = max(1, array.size // size)
    width = array.shape[-1] if array.ndim else 1
    while step > 1 and math.gcd(step, width) != 1:
        step += 1
    # Copies only the selected values (the sample must not keep the input alive): a
    # strided view of contiguous input (under a microsecond for a 512 x 512 frame),
    # ``flat`` slicing otherwise (about 25 microseconds, without copying the input).
    selected = array.reshape(-1)[::step] if array.flags.c_contiguous else array.flat[::step]
    return np.array(selected, dtype=np.float32)


class InputSample:
    """The subsamples of a series' model inputs, summarised once the series has run."""

    def __init__(self) -> None:
        self._parts: list[npt.NDArray[np.float32]] = []

    def add(self, array: npt.NDArray[np.generic]) -> None:
        """Keep a subsample of one model input (a frame, a stack or a whole volume)."""
        self._parts.append(_subsample(array, SAMPLE_PER_INPUT))

    def statistics(self) -> dict[str, float]:
        """Intensity quantiles and foreground fraction; empty when nothing ran."""
        values = np.concatenate(self._parts) if self._parts else np.empty(0, np.float32)
        values = _subsample(values, SAMPLE_PER_SERIES)  # inputs in order: all of them thinned
        values = values[np.isfinite(values)]
        if values.size == 0:
            return {}
        p1, *quantiles, p99 = np.percentile(values, [1.0, *QUANTILES.values(), 99.0])
        level = p1 + FOREGROUND_LEVEL * (p99 - p1)
        out = {name: float(q) for name, q in zip(QUANTILES, quantiles, strict=True)}
        out[FOREGROUND] = float(np.count_nonzero(values > level) / values.size)
        return {name: float(f"{value:.6g}") for name, value in out.items()}
