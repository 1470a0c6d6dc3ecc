"""Stored values to model input values: windows, z-score, min-max, percentile clip,
and the field's own formulas.

The model package says which; this module applies it to a frame or a volume after
the Modality LUT (channels last), and inverts MONOCHROME1 so that "bright" means
the same thing in every image the model sees. The formulas taken from MONAI and
nnU-Net (`field_formula`) are applied exactly as those libraries write them, on
physical values (CT: Hounsfield units), where their packages were trained:

* ``scale_range``: MONAI ``ScaleIntensityRange``,
  ``(x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min``, clipped to
  [b_min, b_max] when ``clip``;
* ``normalize``: MONAI ``NormalizeIntensity``, ``(x - mean) / std`` with fixed
  values or the image's own (population std, 1 where it is 0); with ``nonzero``
  only non-zero voxels are normalized and counted;
* ``ct_normalization``: nnU-Net ``CTNormalization``, clip to [lower, upper] (the
  dataset's 0.5 and 99.5 percentiles), then ``(x - mean) / max(std, 1e-8)``;
* ``channel_mean_std``: to [0, 1] by a window or an a_min..a_max range
  (clipped), then ``(x - mean[c]) / std[c]`` per channel (ImageNet statistics for
  fine-tuned torchvision backbones).
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
    out = values - low  # one new buffer; the rest in place, in the same dtype
    out /= width
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


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
    if method in _FIELD_FORMULAS:
        return field_formula(values, spec)
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


def _scale_range(values: npt.NDArray[np.float32], spec: IntensitySpec) -> npt.NDArray[np.float32]:
    assert spec.a_min is not None and spec.a_max is not None  # checked by IntensitySpec
    out = (values - np.float32(spec.a_min)) / np.float32(spec.a_max - spec.a_min)
    out = out * np.float32(spec.b_max - spec.b_min) + np.float32(spec.b_min)
    if spec.clip:
        np.clip(out, spec.b_min, spec.b_max, out=out)
    return out.astype(np.float32, copy=False)


def _normalize(values: npt.NDArray[np.float32], spec: IntensitySpec) -> npt.NDArray[np.float32]:
    selected = values != 0 if spec.nonzero else None
    chosen = values[selected] if selected is not None else values
    if isinstance(spec.mean, float) and isinstance(spec.std, float):
        mean, std = spec.mean, spec.std
    elif chosen.size:
        mean, std = float(chosen.mean(dtype=np.float64)), float(chosen.std(dtype=np.float64))
    else:
        mean, std = 0.0, 1.0
    std = std if std != 0 else 1.0
    if selected is None:
        return ((values - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)
    out = values.astype(np.float32, copy=True)
    out[selected] = (chosen - np.float32(mean)) / np.float32(std)
    return out


def _ct_normalization(
    values: npt.NDArray[np.float32], spec: IntensitySpec
) -> npt.NDArray[np.float32]:
    lower, upper, mean, std = spec.lower, spec.upper, spec.mean, spec.std
    # IntensitySpec checked all four are set and mean/std are single numbers.
    assert lower is not None and upper is not None
    assert isinstance(mean, float) and isinstance(std, float)
    out = np.clip(values, lower, upper).astype(np.float32, copy=False)
    out -= np.float32(mean)
    out /= np.float32(max(std, 1e-8))
    return out


def _channel_mean_std(
    values: npt.NDArray[np.float32], spec: IntensitySpec
) -> npt.NDArray[np.float32]:
    if spec.center is not None and spec.width is not None:
        unit = _window(values, (spec.center, spec.width))
    else:
        assert spec.a_min is not None and spec.a_max is not None
        unit = _scale(values, spec.a_min, spec.a_max)
    mean, std = spec.channel_stats()
    return ((unit - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


_FIELD_FORMULAS = {
    IntensityMethod.SCALE_RANGE: _scale_range,
    IntensityMethod.NORMALIZE: _normalize,
    IntensityMethod.CT_NORMALIZATION: _ct_normalization,
    IntensityMethod.CHANNEL_MEAN_STD: _channel_mean_std,
}


def field_formula(values: npt.NDArray[np.float32], spec: IntensitySpec) -> npt.NDArray[np.float32]:
    """Apply one of MONAI's / nnU-Net's intensity formulas (see the module notes).

    Parameters
    ----------
    values : numpy.ndarray
        float32 physical values, channels last.
    spec : IntensitySpec
        ``scale_range``, ``normalize``, ``ct_normalization`` or ``channel_mean_std``.

    Returns
    -------
    numpy.ndarray
        float32 of the same shape.

    Raises
    ------
    ValueError
        When ``spec.method`` is not one of these formulas.
    """
    formula = _FIELD_FORMULAS.get(spec.method)
    if formula is None:
        raise ValueError(f"intensity method {spec.method.value!r} is not a field formula")
    return formula(values, spec)
