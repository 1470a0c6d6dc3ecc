"""Stored values to model input values: windows, z-score, min-max, percentile clip.

The model package says which; this module applies it to one frame after the
Modality LUT, and inverts MONOCHROME1 so that "bright" means the same thing in every
image the model sees.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.multival import MultiValue

from inference.preprocessing.geometry import functional_item
from inference.spec import IntensityMethod, IntensitySpec

logger = logging.getLogger(__name__)

Window = tuple[float, float]  # (center, width)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, MultiValue | list | tuple) else value


def voi_window(ds: Dataset, frame_index: int) -> Window | None:
    """Return the dataset's first VOI window for a frame, or ``None`` if it has none.

    Enhanced multi-frame images keep it in the Frame VOI LUT functional group.
    """
    source: Dataset = ds
    item = functional_item(ds, frame_index, "FrameVOILUTSequence")
    if item is not None:
        source = item
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        window = float(_first(center)), float(_first(width))
    except (TypeError, ValueError):
        logger.debug("ignoring malformed VOI window %r/%r", center, width)
        return None
    return window if window[1] > 0 else None


def _window(values: npt.NDArray[np.float32], window: Window) -> npt.NDArray[np.float32]:
    center, width = window
    low = center - width / 2.0
    return np.clip((values - low) / width, 0.0, 1.0).astype(np.float32)


def _scale(values: npt.NDArray[np.float32], low: float, high: float) -> npt.NDArray[np.float32]:
    if high - low <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def normalize(
    values: npt.NDArray[np.float32],
    spec: IntensitySpec,
    *,
    monochrome1: bool = False,
    dataset_window: Window | None = None,
) -> npt.NDArray[np.float32]:
    """Map one frame's physical values to the model's input range.

    Parameters
    ----------
    values : numpy.ndarray
        float32 frame (rows, columns, channels) after the Modality LUT.
    spec : IntensitySpec
        The package's intensity handling.
    monochrome1 : bool
        Invert, so that higher values are brighter as in MONOCHROME2.
    dataset_window : (center, width), optional
        The dataset's VOI window, used by method ``voi``; without one ``voi`` falls
        back to min-max.

    Returns
    -------
    numpy.ndarray
        float32 of the same shape: in [0, 1], or zero mean and unit variance for
        ``zscore``.
    """
    method = spec.method
    if method is IntensityMethod.ZSCORE:
        std = float(values.std())
        out = (values - float(values.mean())) / (std if std > 0 else 1.0)
        return (-out if monochrome1 else out).astype(np.float32)
    if method is IntensityMethod.WINDOW:
        assert spec.center is not None and spec.width is not None  # checked by IntensitySpec
        out = _window(values, (spec.center, spec.width))
    elif method is IntensityMethod.VOI and dataset_window is not None:
        out = _window(values, dataset_window)
    elif method is IntensityMethod.PERCENTILE:
        low, high = np.percentile(values, [spec.low_percentile, spec.high_percentile])
        out = _scale(values, float(low), float(high))
    else:  # min-max, or VOI without a window in the dataset
        if method is IntensityMethod.VOI:
            logger.debug("no VOI window in the dataset; using min-max")
        out = _scale(values, float(values.min()), float(values.max()))
    return (1.0 - out) if monochrome1 else out
