"""Sliding-window inference over a volume on the network grid.

Windows of the package's patch size are placed as MONAI's
``sliding_window_inference`` places them (a fixed interval of
``patch * (1 - overlap)`` voxels, the last window flush with the end) or, for
nnU-Net packages, spread evenly as nnU-Net spreads them; they run
``window.batch`` at a time, and blended with an importance map: a Gaussian
centred on the patch with sigma ``sigma_scale * patch`` per axis (MONAI's
``compute_importance_map``; nnU-Net uses the same 1/8 of the patch), or a
constant. A volume smaller than a patch is padded symmetrically first and cut
back after. Test-time mirroring (nnU-Net) averages the network over every
combination of flips of the mirror axes; an ensemble averages its networks' raw
outputs (logits), as nnU-Net averages folds, before any activation.

Memory: the blended output is one array of (labels, volume) in float32, or in
float16 when that would exceed `FLOAT32_LIMIT_BYTES` (many labels on a large
volume: 100 labels on a 300-slice CT at 1.5 mm take 2.3 GB in float16), plus
one float32 weight map and one batch of windows.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from inference.spec import Blending, Padding, Placement, WindowSpec

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
Network = Callable[[Array], Array]
"""(windows, channels, *patch) float32 to (windows, outputs, *patch) raw outputs."""
FLOAT32_LIMIT_BYTES = 2 * 1024**3
Window = tuple[slice, slice, slice]


def window_starts(
    size: int, patch: int, overlap: float, placement: Placement = Placement.INTERVAL
) -> list[int]:
    """Start of every window along one axis (``size >= patch``).

    Parameters
    ----------
    size, patch : int
        Axis length and window length.
    overlap : float
        Fraction of the patch shared by neighbouring windows (at least, for ``even``).
    placement : Placement
        ``interval``: MONAI's fixed step ``int(patch * (1 - overlap))``, the last
        window moved back to end flush; ``even``: nnU-Net's
        ``compute_steps_for_sliding_window``, the fewest windows whose step is at
        most ``patch * (1 - overlap)``, spread evenly (rounded) from 0 to the end.

    Returns
    -------
    list of int
    """
    if placement is Placement.EVEN:
        count = math.ceil((size - patch) / (patch * (1.0 - overlap))) + 1
        step = (size - patch) / (count - 1) if count > 1 else 0.0
        return [round(step * i) for i in range(count)]
    interval = patch if patch == size else max(1, int(patch * (1.0 - overlap)))
    count = next(d for d in range(size) if d * interval + patch >= size) + 1
    return [min(d * interval, size - patch) for d in range(count)]


@lru_cache(maxsize=8)
def importance_map(
    patch: tuple[int, ...],
    blending: Blending,
    sigma_scale: float,
    placement: Placement = Placement.INTERVAL,
) -> Array:
    """The weight of each voxel of a window when windows are blended.

    Gaussian, with ``sigma = sigma_scale * patch`` per axis, as the package's own tool
    weighs its windows (``placement`` says which tool placed them):

    * interval (MONAI's ``compute_importance_map``): ``exp(-x^2 / (2 sigma^2))`` per axis
      with ``x`` measured from the patch centre ``(n - 1) / 2``, kept at least 1e-3 so
      that window edges still count where only one window reaches;
    * even (nnU-Net's ``compute_gaussian``): a unit impulse at ``n // 2`` smoothed by
      SciPy's ``gaussian_filter`` (truncated at 4 sigma, zero outside), zeros raised to
      the smallest non-zero weight. On an even patch its centre lies half a voxel off
      MONAI's, which moves a downsampling network's answer near window edges.
    """
    if blending is Blending.CONSTANT:
        return np.ones(patch, dtype=np.float32)
    if placement is Placement.EVEN:
        return _nnunet_gaussian(patch, sigma_scale)
    weights = np.ones((), dtype=np.float64)
    for length in patch:
        x = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
        axis = np.exp(-(x**2) / (2.0 * (sigma_scale * length) ** 2))
        weights = np.multiply.outer(weights, axis)
    weights = np.maximum(weights, max(float(weights.min()), 1e-3))
    return weights.astype(np.float32)


def _nnunet_gaussian(patch: tuple[int, ...], sigma_scale: float) -> Array:
    impulse = np.zeros(patch, dtype=np.float64)
    impulse[tuple(n // 2 for n in patch)] = 1.0
    weights = ndimage.gaussian_filter(
        impulse, [n * sigma_scale for n in patch], 0, mode="constant", cval=0.0
    )
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights.astype(np.float32)


def _padding(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    return [
        ((p - s) // 2, (p - s) - (p - s) // 2) if p > s else (0, 0)
        for s, p in zip(shape, patch, strict=True)
    ]


def _pad(image: Array, pads: list[tuple[int, int]], window: WindowSpec) -> Array:
    if not any(before or after for before, after in pads):
        return image
    spec = [(0, 0), *pads]
    if window.padding is Padding.CONSTANT:
        return np.pad(image, spec, mode="constant", constant_values=window.padding_value)
    return np.pad(image, spec, mode="edge" if window.padding is Padding.EDGE else "reflect")


def windows(shape: Sequence[int], window: WindowSpec) -> list[Window]:
    """Every window over a (padded) volume, in C order of their starts."""
    starts = [
        window_starts(size, patch, window.overlap, window.placement)
        for size, patch in zip(shape, window.patch, strict=True)
    ]
    return [
        (
            slice(a, a + window.patch[0]),
            slice(b, b + window.patch[1]),
            slice(c, c + window.patch[2]),
        )
        for a, b, c in itertools.product(*starts)
    ]


def mirrored(network: Network, axes: Sequence[int]) -> Network:
    """The network averaged over every combination of flips of ``axes`` (nnU-Net)."""
    if not axes:
        return network
    combinations = [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]

    def run(batch: Array) -> Array:
        total = network(batch).astype(np.float32, copy=True)
        for combination in combinations:
            flip = tuple(axis + 2 for axis in combination)
            total += np.flip(network(np.ascontiguousarray(np.flip(batch, flip))), flip)
        total /= len(combinations) + 1
        return total

    return run


def ensemble(networks: Sequence[Network]) -> Network:
    """The networks' raw outputs averaged (one network: itself)."""
    if len(networks) == 1:
        return networks[0]

    def run(batch: Array) -> Array:
        total = networks[0](batch).astype(np.float32, copy=True)
        for network in networks[1:]:
            total += network(batch)
        total /= len(networks)
        return total

    return run


def _batches(image: Array, placed: list[Window], size: int) -> Iterator[tuple[list[Window], Array]]:
    for first in range(0, len(placed), size):
        chosen = placed[first : first + size]
        yield chosen, np.stack([image[(slice(None), *w)] for w in chosen])


def sliding_window(image: Array, window: WindowSpec, network: Network, outputs: int) -> Array:
    """Run a network window by window over an image and blend the outputs.

    Parameters
    ----------
    image : numpy.ndarray
        float32 (channels, a0, a1, a2) on the network grid.
    window : WindowSpec
        Patch, overlap, blending, batch, padding and mirroring.
    network : callable
        Batch of windows to raw outputs (`ensemble` of backends).
    outputs : int
        Output channels of the network.

    Returns
    -------
    numpy.ndarray
        (outputs, a0, a1, a2), float32 or float16 (see the module notes).
    """
    spatial = image.shape[1:]
    pads = _padding(spatial, window.patch)
    padded = _pad(image, pads, window)
    shape = padded.shape[1:]
    voxels = math.prod(shape)
    dtype = np.float32 if outputs * voxels * 4 <= FLOAT32_LIMIT_BYTES else np.float16
    blended = np.zeros((outputs, *shape), dtype=dtype)
    weight = np.zeros(shape, dtype=np.float32)
    importance = importance_map(
        tuple(window.patch), window.blending, window.sigma_scale, window.placement
    )
    run = mirrored(network, window.mirror_axes)
    placed = windows(shape, window)
    logger.debug(
        "sliding window: %d windows of %s over %s, accumulating in %s",
        len(placed),
        list(window.patch),
        list(shape),
        np.dtype(dtype).name,
    )
    for chosen, batch in _batches(padded, placed, window.batch):
        result = np.array(run(batch), dtype=np.float32, copy=None)
        if not result.flags.writeable:  # weighted in place below
            result = result.copy()
        if result.shape[1] != outputs:
            raise ValueError(f"the network gave {result.shape[1]} outputs, expected {outputs}")
        for index, where in enumerate(chosen):
            weighted = np.multiply(result[index], importance, out=result[index])
            blended[(slice(None), *where)] += weighted
            weight[where] += importance
    np.divide(blended, weight, out=blended, casting="same_kind")
    crop = tuple(slice(before, n - after) for (before, after), n in zip(pads, shape, strict=True))
    return blended[(slice(None), *crop)]
