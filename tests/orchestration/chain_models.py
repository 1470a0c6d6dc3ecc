"""Small model packages for chained-model tests: a CT classifier whose answer the test
chooses, and CT threshold segmenters, all at CT_small's 128 x 128 so that no resizing
blurs a mask's edge (a restricted input must give an exactly predictable output)."""

from __future__ import annotations

from pathlib import Path

from tests.inference.graphs import (
    ct_window_head,
    linear_classifier_graph,
    threshold_graph,
    write_package,
)

SIZE = [128, 128]
WINDOW_LOW, WINDOW_WIDTH = -1000.0, 2000.0

_LABEL = """
[[output.labels]]
name = "{label}"
threshold = 0.5
finding = {{ value = "{code}", scheme = "SCT", meaning = "{meaning}" }}
category = {{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }}
"""

# Real SNOMED CT codes, so that dciodvfy finds nothing to say about the coded concepts.
_CODES = {
    "liver": ("10200004", "Liver"),
    "lung": ("39607008", "Lung structure"),
    "dense": ("272673000", "Bone structure"),
    "soft": ("85756007", "Body tissue"),
    "chest": ("51185008", "Thoracic structure"),
    "abdomen": ("818983003", "Abdomen"),
}


def _head(name: str, task: str) -> str:
    center = WINDOW_LOW + WINDOW_WIDTH / 2
    return ct_window_head(
        name, task, dims=2, size=SIZE, resize="stretch", center=center, width=WINDOW_WIDTH
    )


def _labels(names: list[str]) -> str:
    return "".join(_LABEL.format(label=n, code=_CODES[n][0], meaning=_CODES[n][1]) for n in names)


def classifier_package(
    folder: Path, name: str, logits: dict[str, float], weights: list[float] | None = None
) -> Path:
    """A CT classifier that answers ``logits`` (label -> logit) for every image, plus
    ``weights`` times the image's mean (0-1 over the window) where given."""
    write_package(folder, _head(name, "classification") + _labels(list(logits)))
    linear_classifier_graph(folder / "model.onnx", SIZE, list(logits.values()), weights)
    return folder


def threshold_package(folder: Path, name: str, level_hu: float, label: str) -> Path:
    """A CT segmenter whose ``label`` is exactly the pixels above ``level_hu``."""
    write_package(folder, _head(name, "segmentation") + _labels([label]))
    threshold_graph(folder / "model.onnx", SIZE, (level_hu - WINDOW_LOW) / WINDOW_WIDTH)
    return folder
