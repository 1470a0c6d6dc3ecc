"""3D Dice and Hausdorff distances in millimetres: exact on boxes, MONAI's on blobs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.finetune.metrics import dice
from inference.finetune.surface import hausdorff_mm

SPACING = (3.0, 0.7, 0.9)  # slice, row, column (mm)


def _boxes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4-slice boxes of one footprint, two slices apart."""
    a = np.zeros((10, 12, 12), dtype=bool)
    b = np.zeros_like(a)
    a[2:6, 3:9, 3:9] = True
    b[4:8, 3:9, 3:9] = True
    return a, b


def test_dice_and_hausdorff_are_exact_on_shifted_boxes() -> None:
    a, b = _boxes()
    assert dice(a, b) == 0.5  # 2 of 4 slices shared
    # Every edge voxel of one box is two slices (2 x 3 mm) from the other's nearest edge.
    assert hausdorff_mm(a, b, SPACING, None) == pytest.approx(6.0)
    assert hausdorff_mm(a, a, SPACING) == 0.0


def test_empty_masks_give_zero_or_infinity() -> None:
    a, _ = _boxes()
    empty = np.zeros_like(a)
    assert hausdorff_mm(empty, empty, SPACING) == 0.0
    assert hausdorff_mm(a, empty, SPACING) == float("inf")


def test_spacing_must_match_the_masks() -> None:
    a, b = _boxes()
    with pytest.raises(ValueError, match=r"one spacing per axis"):
        hausdorff_mm(a, b, (1.0, 1.0))


def _blob(rng: np.random.Generator, shape: tuple[int, int, int], grow: int) -> np.ndarray:
    return np.asarray(ndimage.binary_dilation(rng.random(shape) > 0.996, iterations=grow))


# MONAI 1.6 warns about its own deprecated argument inside compute_hausdorff_distance.
@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
@pytest.mark.parametrize("percentile", [95.0, None])
def test_hausdorff_matches_monai(percentile: float | None) -> None:
    """Anisotropic spacing, blobs touching the volume's border, both percentiles."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(3)
    for _ in range(4):
        shape = (14, 40, 33)
        truth, predicted = _blob(rng, shape, 3), _blob(rng, shape, 2)
        truth[:, 0, :5] = True  # on the border: MONAI crops with a one-voxel margin
        theirs = monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(predicted[None, None]),
            torch.from_numpy(truth[None, None]),
            include_background=True,
            percentile=percentile,
            spacing=SPACING,
        ).item()
        ours = hausdorff_mm(truth, predicted, SPACING, percentile)
        assert ours == pytest.approx(theirs, rel=1e-5)
