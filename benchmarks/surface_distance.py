"""HD95 of one case: ``inference.finetune.surface.hausdorff_mm`` against MONAI's own.

``dicom-node evaluate`` scores every segmentation case with `hausdorff_mm` (SciPy, no
torch), which follows MONAI's ``compute_hausdorff_distance`` (edges by erosion inside
the union's box, k-d tree distances on spacing-scaled coordinates, the larger of the two
directed percentiles). This prints, for masks the size of organs on a CT, both values
and their difference, and the time of each in one run, as a ratio to MONAI.

Run:  python -m benchmarks.surface_distance [--slices 140] [--size 512] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.finetune.surface import hausdorff_mm

SPACING = (2.5, 0.7, 0.7)


def _organ(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radii: float
) -> np.ndarray:
    """An ellipsoid with a rough, noisy border, like a reader's organ outline."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    field = (
        ((zz - centre[0]) / (radii * 0.4)) ** 2
        + ((yy - centre[1]) / radii) ** 2
        + ((xx - centre[2]) / (radii * 1.2)) ** 2
    )
    noise = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=shape), 3) * 3
    return np.asarray(field + noise < 1)


def _timed(fn: Callable[[], float], runs: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=140)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    import torch
    from monai.metrics import compute_hausdorff_distance

    shape = (args.slices, args.size, args.size)
    middle = (shape[0] / 2, shape[1] / 2, shape[2] / 2)
    truth = _organ(shape, middle, args.size / 5)
    predicted = _organ(shape, (middle[0] + 2, middle[1] + 3, middle[2] - 2), args.size / 5.2)

    def monai() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return float(
                compute_hausdorff_distance(
                    torch.from_numpy(predicted[None, None]),
                    torch.from_numpy(truth[None, None]),
                    include_background=True,
                    percentile=95,
                    spacing=SPACING,
                ).item()
            )

    theirs, monai_s = _timed(monai, args.runs)
    ours, ours_s = _timed(lambda: hausdorff_mm(truth, predicted, SPACING, 95.0), args.runs)
    print(
        f"masks {shape}, spacing {SPACING} mm, {int(truth.sum())} and {int(predicted.sum())} voxels"
    )
    print(f"{'implementation':<28}{'HD95 (mm)':>12}{'median s':>10}{'ratio':>8}")
    print(f"{'MONAI (baseline)':<28}{theirs:>12.4f}{monai_s:>10.3f}{1.0:>8.2f}")
    print(f"{'surface.hausdorff_mm':<28}{ours:>12.4f}{ours_s:>10.3f}{ours_s / monai_s:>8.2f}")
    print(f"|difference| {abs(ours - theirs):.2e} mm")


if __name__ == "__main__":
    main()
