"""A windowed 3D run: one stack to a segmentation on its own source slices.

The steps, each in its own module, each keeping the way back:

1. the stack's affine from its slice positions (`preprocessing.volume`): sheared
   stacks carry their shear, uneven ones are refused or regularized per package;
2. decoding into one float32 volume (`preprocessing.loader`);
3. the network's grid (`preprocessing.grid`) and the volume resampled onto it;
   intensity is applied where the package's pipeline applied it: before
   resampling for ``"source"`` packages (nnU-Net normalizes, then resamples),
   after it for oriented ones (MONAI's intensity transforms follow ``Spacingd``);
4. optionally a crop to the foreground, then sliding windows (`sliding_window`)
   over every network of the package, logits averaged;
5. probabilities back onto each source slice and decided there
   (`postprocessing.volume`, `postprocessing.segmentation`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from inference.errors import UnsupportedSeriesError
from inference.input_statistics import InputSample
from inference.postprocessing.activation import Array
from inference.postprocessing.segmentation import decide_segmentation
from inference.postprocessing.volume import source_probabilities
from inference.prediction import ModelIdentity, Segmentation
from inference.preprocessing.grid import NetworkGrid, network_grid, resample
from inference.preprocessing.intensity import normalize, voi_window
from inference.preprocessing.loader import decode_stack
from inference.preprocessing.pixels import DecodeError
from inference.preprocessing.plan import SeriesPlan
from inference.preprocessing.volume import VolumeGeometryError, regular_volume, stack_geometry
from inference.sliding_window import Network, ensemble, sliding_window
from inference.spec import SOURCE_ORIENTATION, Activation, GeometrySpec, ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Foreground:
    """The part of the network grid the windows ran over: start and stop per axis."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]


def foreground(image: Array, spec: GeometrySpec) -> Foreground:
    """The box around voxels above ``crop_threshold`` (any channel), plus the margin.

    As MONAI's ``CropForegroundd`` with ``select_fn = x > threshold``; an image
    without foreground keeps its whole extent.
    """
    shape = image.shape[1:]
    selected = (image > spec.crop_threshold).any(axis=0)
    if not spec.crop_foreground or not selected.any():
        return Foreground((0, 0, 0), (shape[0], shape[1], shape[2]))
    starts, stops = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(selected, axis=other))
        starts.append(max(0, int(hits[0]) - spec.crop_margin))
        stops.append(min(shape[axis], int(hits[-1]) + 1 + spec.crop_margin))
    return Foreground((starts[0], starts[1], starts[2]), (stops[0], stops[1], stops[2]))


def _background_logits(outputs: int, activation: Activation) -> npt.NDArray[np.float32]:
    """Raw outputs that mean "background" (outside a foreground crop)."""
    values = np.full(outputs, -1e4, dtype=np.float32)
    if activation is Activation.SOFTMAX:
        values[0] = 0.0
    elif activation is Activation.NONE:
        values[:] = 0.0
    return values


def _uncropped(
    logits: Array, box: Foreground, grid: NetworkGrid, activation: Activation
) -> tuple[Array, NetworkGrid]:
    """The cropped logits with one voxel of background around, and their grid.

    Source pixels outside the crop then read background, and pixels at its edge
    blend into it linearly, as MONAI's inverse of the crop (zero padding) does.
    """
    if box.start == (0, 0, 0) and box.stop == grid.shape:
        return logits, grid
    fill = _background_logits(logits.shape[0], activation)
    padded = np.empty((logits.shape[0], *(n + 2 for n in logits.shape[1:])), dtype=logits.dtype)
    padded[...] = fill.reshape(-1, 1, 1, 1)
    padded[:, 1:-1, 1:-1, 1:-1] = logits
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(box.start, dtype=np.float64) - 1.0
    to_volume = grid.to_volume @ shift
    shape = (padded.shape[1], padded.shape[2], padded.shape[3])
    return padded, NetworkGrid(shape, to_volume, grid.affine @ shift)


def predict_windowed(
    series: Sequence[Dataset],
    plan: SeriesPlan,
    spec: ModelSpec,
    identity: ModelIdentity,
    pool: Executor,
    networks: Sequence[Network],
    keep_probabilities: bool = False,
    *,
    input_sample: InputSample,
) -> Segmentation:
    """Run a windowed 3D package on the first stack of a plan.

    Parameters
    ----------
    series : sequence of pydicom.Dataset
        The series' instances (the plan's indices point into it).
    plan : SeriesPlan
        The stack to run (the first) and what was left out.
    spec : ModelSpec
        A package with ``input.window``.
    identity : ModelIdentity
        Written into the result.
    pool : Executor
        Decoding threads.
    networks : sequence of callable
        One per network of the package: a window batch to raw outputs.
    keep_probabilities : bool
        Also return the source-grid probabilities.
    input_sample : InputSample
        Receives a subsample of the prepared volume (what the windows run over).

    Returns
    -------
    Segmentation
        Masks (sigmoid) or a label map (softmax) on the stack's own slices.

    Raises
    ------
    UnsupportedSeriesError
        When the stack is no volume (missing geometry, uneven steps the package
        does not resample) or does not decode; the reason names the stack.
    """
    stack = plan.stacks[0]
    geometry_spec = spec.input.volume_geometry
    window = spec.input.window
    assert geometry_spec is not None and window is not None  # a windowed package
    where = f"stack ({stack.description})"
    started = time.perf_counter()
    try:
        geometry = stack_geometry(
            stack,
            geometry_spec.max_slice_step_deviation,
            resample_uneven=geometry_spec.resample_uneven,
        )
        decoded, monochrome1 = decode_stack(series, stack, spec, pool)
    except (VolumeGeometryError, DecodeError, ValueError) as exc:
        raise UnsupportedSeriesError(f"{where}: {exc}", plan.series_instance_uid) from exc
    first = stack.frames[0]

    def intensity(values: Array) -> Array:
        return normalize(
            values,
            spec.input.intensity,
            monochrome1=monochrome1,
            dataset_window=voi_window(series[first.dataset_index], first.frame_index),
        )

    on_source = geometry_spec.orientation == SOURCE_ORIENTATION
    if on_source:
        decoded = intensity(decoded)
    volume = regular_volume(decoded, geometry)
    del decoded
    grid = network_grid(geometry, geometry_spec)
    image = np.stack(
        [
            resample(volume[..., c], grid.to_volume, grid.shape, geometry_spec.interpolation)
            for c in range(volume.shape[-1])
        ]
    )
    del volume
    if not on_source:
        image = np.ascontiguousarray(np.moveaxis(intensity(np.moveaxis(image, 0, -1)), -1, 0))
    input_sample.add(image)
    box = foreground(image, geometry_spec)
    crop = (slice(None), *(slice(a, b) for a, b in zip(box.start, box.stop, strict=True)))
    prepared = time.perf_counter()
    activation = spec.output.activation
    outputs = len(spec.labels) + (1 if activation is Activation.SOFTMAX else 0)
    logits = sliding_window(np.ascontiguousarray(image[crop]), window, ensemble(networks), outputs)
    del image
    ran = time.perf_counter()
    logger.info(
        "model %s: %s on a %s grid at %s mm (%s stack), %d network(s), prepared in %.2f s, "
        "windows %.2f s",
        identity.name,
        where,
        list(grid.shape),
        [round(s, 3) for s in grid.spacing],
        "sheared" if geometry.sheared else "orthogonal",
        len(networks),
        prepared - started,
        ran - prepared,
    )
    padded_logits, padded_grid = _uncropped(logits, box, grid, activation)
    probs: Iterator[Array] = (
        np.moveaxis(p, 0, -1)
        for p in source_probabilities(
            padded_logits, padded_grid, geometry, activation, spec.output.interpolate
        )
    )
    result = decide_segmentation(
        spec,
        identity,
        plan.series_instance_uid,
        stack,
        zip([f.ref for f in stack.frames], probs, strict=True),
        plan.skipped,
        keep_probabilities,
        as_label_map=True,
    )
    logger.info(
        "model %s: back on the source slices in %.2f s", identity.name, time.perf_counter() - ran
    )
    return result
