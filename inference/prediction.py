"""What a model says about a series: the types that cross from `inference` to `sr_writer`.

These are plain data, free of any deep-learning framework, so that `sr_writer` and
`dicom_node` can use them without importing a backend. Every spatial result is tied
to an exact source frame (SOP Instance UID and 1-based frame number) and given in
that frame's own pixel grid, so that result objects land on the right image. Each
carries ``input_statistics`` (`inference.input_statistics`): intensity quantiles and
foreground fraction of what the network saw, for drift monitoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class CodedConcept:
    """A coded concept as the model package declares it (e.g. SCT 3961000 "Bone")."""

    value: str
    scheme_designator: str
    meaning: str


@dataclass(frozen=True)
class ModelIdentity:
    """Who made a result: written into every object as the algorithm and device.

    ``model_card`` names the package version whose model card applies (``NAME
    VERSION``), empty when the package has no card for this version.
    """

    name: str
    version: str
    description: str = ""
    manufacturer: str = "DICOM AI node"
    not_for_clinical_use: bool = True
    model_card: str = ""


@dataclass(frozen=True)
class Label:
    """One output of a model: what it finds, how it is coded, where it decides."""

    name: str
    finding: CodedConcept
    category: CodedConcept
    threshold: float = 0.5


@dataclass(frozen=True)
class FrameRef:
    """One source frame: the SOP instance and its 1-based frame number."""

    sop_instance_uid: str
    frame_number: int = 1


@dataclass(frozen=True)
class LabelScore:
    """A classification output for one label: probability and decision at threshold."""

    label: Label
    probability: float
    positive: bool


@dataclass(frozen=True)
class Heatmap:
    """A class activation map for one positive label, at the source frame's resolution.

    ``values`` is float32 in [0, 1], shape (rows, columns) of the source frame.
    """

    label: Label
    frame: FrameRef
    values: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Classification:
    """Per-label scores for a series, with CAM heatmaps for the positive labels."""

    model: ModelIdentity
    series_instance_uid: str
    frames: tuple[FrameRef, ...]
    scores: tuple[LabelScore, ...]
    heatmaps: tuple[Heatmap, ...] = ()
    skipped: tuple[str, ...] = ()
    input_statistics: dict[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Segmentation:
    """Per-label masks at source resolution, one mask frame per source frame.

    The masks come in one of two forms: ``masks``, bool (len(frames), rows,
    columns, len(labels)), for labels that may overlap (sigmoid); or
    ``label_map``, unsigned (len(frames), rows, columns) where 0 is background and
    ``k`` is label ``k`` (1-based), for exclusive labels (softmax), which keeps a
    100-label result on a large CT at one byte per voxel. Read either through
    `mask` and `voxel_counts`. ``probabilities``, when asked for, has the
    ``masks`` shape as float32 in [0, 1] (for fractional SEG).
    ``pixel_spacing_mm`` is (row, column) spacing and ``slice_spacing_mm`` the
    distance between frames along the normal, so that voxel volume is their
    product; ``None`` where the source does not say.
    """

    model: ModelIdentity
    series_instance_uid: str
    frames: tuple[FrameRef, ...]
    labels: tuple[Label, ...]
    masks: npt.NDArray[np.bool_] | None
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_spacing_mm: float | None = None
    probabilities: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    skipped: tuple[str, ...] = ()
    label_map: npt.NDArray[np.unsignedinteger[Any]] | None = field(default=None, repr=False)
    input_statistics: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if (self.masks is None) == (self.label_map is None):
            raise ValueError("a Segmentation holds either masks or a label_map, exactly one")
        frames, labels = len(self.frames), len(self.labels)
        if self.label_map is not None:
            if self.label_map.ndim != 3 or self.label_map.shape[0] != frames:
                raise ValueError(
                    f"label_map must have shape (frames={frames}, rows, columns), "
                    f"got {self.label_map.shape}"
                )
            if self.label_map.dtype.kind != "u" or (labels < int(self.label_map.max(initial=0))):
                raise ValueError(
                    f"label_map must hold unsigned values 0..{labels}, got "
                    f"{self.label_map.dtype} up to {int(self.label_map.max(initial=0))}"
                )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(frames, rows, columns) of the masks."""
        source = self.masks if self.masks is not None else self.label_map
        assert source is not None  # one of them, checked at construction
        return int(source.shape[0]), int(source.shape[1]), int(source.shape[2])

    def mask(self, index: int) -> npt.NDArray[np.bool_]:
        """The (frames, rows, columns) mask of label ``index`` (0-based, label order)."""
        if self.masks is not None:
            return self.masks[..., index]
        assert self.label_map is not None
        return np.asarray(self.label_map == index + 1)

    def frame_mask(self, index: int, frame: int) -> npt.NDArray[np.bool_]:
        """The (rows, columns) mask of label ``index`` on one frame (0-based position)."""
        if self.masks is not None:
            return self.masks[frame, ..., index]
        assert self.label_map is not None
        return np.asarray(self.label_map[frame] == index + 1)

    def voxel_counts(self) -> npt.NDArray[np.int64]:
        """Voxels of each label on each frame, shape (frames, labels).

        Counted once per prediction (the SEG and the SR both ask); a copy is returned.
        """
        return self._voxel_counts.copy()

    @cached_property
    def _voxel_counts(self) -> npt.NDArray[np.int64]:
        if self.masks is not None:
            # One plane at a time: numpy counts a plane ~10x faster than it
            # reduces a 4D array over two axes.
            masks = self.masks
            counts = np.empty((masks.shape[0], masks.shape[3]), dtype=np.int64)
            for frame in range(masks.shape[0]):
                for label in range(masks.shape[3]):
                    counts[frame, label] = np.count_nonzero(masks[frame, ..., label])
            return counts
        assert self.label_map is not None
        bins = len(self.labels) + 1
        return np.stack(
            [np.bincount(frame.ravel(), minlength=bins)[1:bins] for frame in self.label_map]
        ).astype(np.int64)

    @property
    def voxel_volume_mm3(self) -> float | None:
        """Volume of one mask voxel, or ``None`` when spacing is unknown."""
        if self.pixel_spacing_mm is None or self.slice_spacing_mm is None:
            return None
        row, col = self.pixel_spacing_mm
        return row * col * self.slice_spacing_mm


@dataclass(frozen=True)
class Box:
    """A detected object on one source frame, in that frame's pixel coordinates.

    Coordinates are (row_min, column_min, row_max, column_max), inclusive-exclusive
    floats in source pixels, after non-maximum suppression.
    """

    label: Label
    score: float
    frame: FrameRef
    bounds: tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """Boxes found in a series."""

    model: ModelIdentity
    series_instance_uid: str
    frames: tuple[FrameRef, ...]
    labels: tuple[Label, ...]
    boxes: tuple[Box, ...]
    skipped: tuple[str, ...] = ()
    input_statistics: dict[str, float] = field(default_factory=dict, compare=False)


Prediction = Classification | Segmentation | Detection
