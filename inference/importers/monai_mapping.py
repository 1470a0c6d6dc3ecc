"""A MONAI bundle's transforms and inferer, mapped onto the package's keys one by one.

The bundle's config is resolved and its transforms instantiated by MONAI itself
(`inference.importers.monai_bundle`), so this module reads the transforms' own
attributes, with MONAI's defaults filled in, rather than the config text. Each
transform either maps onto ``[input.geometry]``, ``[input.intensity]``,
``[input.window]`` or ``[output]``, or is accepted with a note saying why it has no
effect in the node (``LoadImaged``: the node reads the DICOM itself; ``Invertd``: the
node always maps results back onto the source slices), or is refused with an error
naming the transform and its config id. Nothing is dropped silently.

The node's fixed order is orientation, resampling, intensity, then the crop to the
foreground; a bundle whose steps need another order to mean the same is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.importers.errors import ImportModelError

Step = tuple[str, Any]  # (config id, instantiated transform)

# Steps that prepare data for a torch pipeline and change no value the network sees.
_PRE_NO_EFFECT = {
    "LoadImaged": "the node reads the DICOM series itself",
    "EnsureChannelFirstd": "the node always adds the channel axis",
    "EnsureTyped": "the node's arrays are already float32",
    "ToTensord": "the node's arrays are already float32",
    "Identityd": "does nothing",
    "ToDeviced": "the backend places the data",
}
_POST_NO_EFFECT = {
    "SaveImaged": "the node writes SEG and SR instead of image files",
    "EnsureTyped": "type conversion only",
    "ToDeviced": "device placement only",
    "KeepLargestConnectedComponentd": (
        "a cleanup step, not applied by the node: results may keep small islands "
        "the bundle would remove"
    ),
}
_SPLINE_ORDER = {"nearest": 0, "bilinear": 1, "linear": 1, "trilinear": 1, "bicubic": 3}
_PADDING = {"constant": "constant", "replicate": "edge", "reflect": "reflect"}
_DEFAULT_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class MappedPipeline:
    """The package keys a bundle's pipeline maps onto, and the notes on the way."""

    geometry: dict[str, Any] = field(default_factory=dict)
    intensity: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)
    activation: str = ""
    threshold: float | None = None
    interpolate: str = "probabilities"  # what Invertd takes back: after or before activation
    notes: list[str] = field(default_factory=list)


def _name(transform: Any) -> str:
    return type(transform).__name__


def _first(value: Any) -> Any:
    """A dictionary transform's setting for its first key (MONAI keeps one per key)."""
    return value[0] if isinstance(value, list | tuple) else value


def _uniform(value: Any, what: str, config: Path, key: str) -> float:
    values = [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]
    if len(set(values)) != 1:
        raise ImportModelError(config, key, f"{what} {values} differs by axis; the node takes one")
    return values[0]


class _Pre:
    """The state of the preprocessing walk: what was mapped so far."""

    def __init__(self, config: Path, pipeline: MappedPipeline) -> None:
        self.config = config
        self.out = pipeline
        self.crop_key = ""

    def orientation(self, transform: Any, key: str) -> None:
        ornt = transform.ornt_transform
        if ornt.labels not in (None, _DEFAULT_LABELS) or ornt.as_closest_canonical:
            raise ImportModelError(
                self.config, key, "Orientationd with custom labels or as_closest_canonical"
            )
        codes = str(ornt.axcodes or "")
        if len(codes) != 3:
            raise ImportModelError(self.config, key, f"axcodes {codes!r} is not a 3-letter code")
        self.out.geometry["orientation"] = codes.upper()

    def spacing(self, transform: Any, key: str) -> None:
        if "orientation" not in self.out.geometry:
            raise ImportModelError(
                self.config,
                key,
                "Spacingd before Orientationd: its pixdim follows the file's own axes",
            )
        sp = transform.spacing_transform
        if sp.diagonal or not all(math.isnan(float(v)) for v in (*sp.min_pixdim, *sp.max_pixdim)):
            raise ImportModelError(self.config, key, "Spacingd with diagonal or min/max_pixdim")
        pixdim = [float(v) for v in sp.pixdim]
        if len(pixdim) == 1:
            pixdim *= 3
        if len(pixdim) != 3:
            raise ImportModelError(self.config, key, f"pixdim {pixdim} is not 3D")
        self.out.geometry["spacing"] = [v if v > 0 else "keep" for v in pixdim]
        mode = _first(transform.mode)
        order = _SPLINE_ORDER.get(str(mode)) if not isinstance(mode, int) else mode
        if order is None or not 0 <= order <= 3:
            raise ImportModelError(self.config, key, f"Spacingd mode {mode!r} has no spline order")
        self.out.geometry["interpolation"] = order

    def _set_intensity(self, values: dict[str, Any], key: str) -> None:
        if self.out.intensity:
            raise ImportModelError(self.config, key, "a second intensity transform")
        if self.crop_key:
            raise ImportModelError(
                self.config,
                self.crop_key,
                "CropForegroundd before the intensity transform: the node crops after it",
            )
        self.out.intensity = values

    def scale_range(self, transform: Any, key: str) -> None:
        s = transform.scaler
        if s.b_min is None or s.b_max is None:
            raise ImportModelError(self.config, key, "ScaleIntensityRanged without b_min/b_max")
        values = {k: float(getattr(s, k)) for k in ("a_min", "a_max", "b_min", "b_max")}
        self._set_intensity({"method": "scale_range", **values, "clip": bool(s.clip)}, key)

    def normalize(self, transform: Any, key: str) -> None:
        n = transform.normalizer
        fixed = [v for v in (n.subtrahend, n.divisor) if v is not None]
        if len(fixed) == 1:
            raise ImportModelError(
                self.config, key, "NormalizeIntensityd with only one of subtrahend and divisor"
            )
        values: dict[str, Any] = {"method": "normalize", "nonzero": bool(n.nonzero)}
        if fixed:
            values |= {
                "mean": _uniform(n.subtrahend, "subtrahend", self.config, key),
                "std": _uniform(n.divisor, "divisor", self.config, key),
            }
        self._set_intensity(values, key)

    def crop(self, transform: Any, key: str, image_key: str) -> None:
        from monai.transforms.utils import is_positive

        c = transform.cropper
        if (
            transform.source_key != image_key
            or c.select_fn is not is_positive
            or c.channel_indices is not None
            or _uniform(c.k_divisible, "k_divisible", self.config, key) != 1
        ):
            raise ImportModelError(
                self.config,
                key,
                "CropForegroundd other than on the image with the default select_fn "
                "(x > 0), all channels and k_divisible 1",
            )
        margin = int(_uniform(c.margin, "margin", self.config, key))
        self.out.geometry |= {"crop_foreground": True, "crop_threshold": 0.0}
        self.out.geometry["crop_margin"] = margin
        self.crop_key = key


def _touches(transform: Any, key: str) -> bool:
    return key in tuple(getattr(transform, "keys", ()) or ())


def map_preprocessing(
    steps: Sequence[Step], image_key: str, config: Path, pipeline: MappedPipeline
) -> None:
    """Map the pre-transforms onto ``[input.geometry]`` and ``[input.intensity]``.

    Parameters
    ----------
    steps : sequence of (str, object)
        Each transform with its config id, in order.
    image_key : str
        The network input's key (``network_data_format.inputs``).
    config : pathlib.Path
        The inference config, named in errors.
    pipeline : MappedPipeline
        Filled in place.

    Raises
    ------
    ImportModelError
        For a transform with no equivalent in the node, naming it and its config id.
    """
    walk = _Pre(config, pipeline)
    handlers: dict[str, Callable[[Any, str], None]] = {
        "Orientationd": walk.orientation,
        "Spacingd": walk.spacing,
        "ScaleIntensityRanged": walk.scale_range,
        "NormalizeIntensityd": walk.normalize,
        "CropForegroundd": lambda t, k: walk.crop(t, k, image_key),
    }
    for key, transform in steps:
        name = _name(transform)
        if name in _PRE_NO_EFFECT:
            pipeline.notes.append(f"{key} {name}: no effect in the node ({_PRE_NO_EFFECT[name]})")
        elif hasattr(transform, "keys") and not _touches(transform, image_key):
            pipeline.notes.append(f"{key} {name}: does not touch {image_key!r}, not needed")
        elif name in handlers:
            handlers[name](transform, key)
        else:
            raise ImportModelError(config, key, f"{name} has no equivalent in the node")
    if "orientation" not in pipeline.geometry:
        raise ImportModelError(
            config, "preprocessing", "no Orientationd: the network's axis order is undefined"
        )
    if not pipeline.intensity:
        raise ImportModelError(
            config,
            "preprocessing",
            "no intensity transform (ScaleIntensityRanged or NormalizeIntensityd)",
        )
    pipeline.geometry.setdefault("spacing", ["keep", "keep", "keep"])


def map_inferer(inferer: Any, key: str, config: Path, pipeline: MappedPipeline) -> None:
    """Map a ``SlidingWindowInferer`` onto ``[input.window]``.

    Raises
    ------
    ImportModelError
        For another inferer, a window size left to the image (<= 0), per-axis
        overlap or sigma, a padding mode the node lacks, or coordinates as input.
    """
    from monai.inferers import SlidingWindowInferer

    if not isinstance(inferer, SlidingWindowInferer):
        raise ImportModelError(
            config, key, f"{_name(inferer)}: only SlidingWindowInferer maps onto the node"
        )
    roi_size: Any = inferer.roi_size
    roi = [int(v) for v in roi_size] if isinstance(roi_size, list | tuple) else [int(roi_size)]
    if len(roi) != 3 or min(roi) < 1:
        raise ImportModelError(config, f"{key}::roi_size", f"{roi} is not a 3D window size")
    padding = _PADDING.get(str(inferer.padding_mode))
    if padding is None or inferer.with_coord:
        raise ImportModelError(
            config,
            key,
            f"padding_mode {str(inferer.padding_mode)!r} or with_coord has no equivalent",
        )
    pipeline.window = {
        "patch": roi,
        "overlap": _uniform(inferer.overlap, "overlap", config, f"{key}::overlap"),
        "blending": str(inferer.mode),
        "sigma_scale": _uniform(inferer.sigma_scale, "sigma_scale", config, f"{key}::sigma_scale"),
        "batch": int(inferer.sw_batch_size),
        "padding": padding,
        "padding_value": float(inferer.cval),
    }
    if pipeline.window["blending"] not in ("gaussian", "constant"):
        raise ImportModelError(config, f"{key}::mode", f"blending {inferer.mode!r}")


def _activation(transform: Any, key: str, config: Path, pipeline: MappedPipeline) -> None:
    softmax, sigmoid = bool(_first(transform.softmax)), bool(_first(transform.sigmoid))
    if _first(transform.other) is not None or softmax == sigmoid:
        raise ImportModelError(config, key, "Activationsd other than softmax or sigmoid alone")
    pipeline.activation = "softmax" if softmax else "sigmoid"


def _discrete(transform: Any, key: str, config: Path, pipeline: MappedPipeline) -> None:
    argmax, threshold = bool(_first(transform.argmax)), _first(transform.threshold)
    if _first(transform.rounding) is not None:
        raise ImportModelError(config, key, "AsDiscreted rounding has no equivalent")
    if argmax and pipeline.activation in ("", "softmax"):
        pipeline.activation = "softmax"
    elif threshold is not None and pipeline.activation == "sigmoid" and not argmax:
        pipeline.threshold = float(threshold)
    else:
        raise ImportModelError(
            config,
            key,
            f"AsDiscreted argmax={argmax} threshold={threshold} after activation "
            f"{pipeline.activation or 'none'}: the node takes softmax + argmax "
            "or sigmoid + threshold",
        )


def map_postprocessing(
    steps: Sequence[Step], pred_key: str, config: Path, pipeline: MappedPipeline
) -> None:
    """Map the post-transforms onto ``[output] activation`` and the labels' threshold.

    Raises
    ------
    ImportModelError
        For a transform the node does not apply, or when the steps do not end in a
        decision (softmax + argmax, or sigmoid + threshold).
    """
    for key, transform in steps:
        name = _name(transform)
        if name == "Invertd":
            # What Invertd resamples back is what the node interpolates onto the source.
            pipeline.interpolate = "probabilities" if pipeline.activation else "logits"
            pipeline.notes.append(
                f"{key} Invertd: the node maps results back onto the source slices "
                f"({pipeline.interpolate} interpolated, as here)"
            )
        elif name in _POST_NO_EFFECT:
            pipeline.notes.append(f"{key} {name}: {_POST_NO_EFFECT[name]}")
        elif hasattr(transform, "keys") and not _touches(transform, pred_key):
            pipeline.notes.append(f"{key} {name}: does not touch {pred_key!r}, not needed")
        elif name == "Activationsd":
            _activation(transform, key, config, pipeline)
        elif name == "AsDiscreted":
            _discrete(transform, key, config, pipeline)
        else:
            raise ImportModelError(config, key, f"{name} has no equivalent in the node")
    if pipeline.activation == "sigmoid" and pipeline.threshold is None:
        pipeline.threshold = 0.5
        pipeline.notes.append("postprocessing: sigmoid without AsDiscreted threshold; 0.5 used")
    if not pipeline.activation:
        raise ImportModelError(
            config, "postprocessing", "neither softmax/argmax nor sigmoid: no decision to map"
        )
