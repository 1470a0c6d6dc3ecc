"""Decoded pixels in physical units: every transfer syntax, Modality LUT, colour.

pydicom decodes every transfer syntax it has a plugin for (native little and big
endian, deflate, RLE, JPEG baseline/extended/lossless through pylibjpeg, JPEG-LS
through pyjpegls, JPEG 2000 through openjpeg). On top of that this module applies the
Modality LUT per frame (Rescale Slope/Intercept, LUT sequence, or the enhanced
multi-frame Pixel Value Transformation), so that CT is in HU, converts YBR and
palette colour to RGB, and reports MONOCHROME1 so that intensity handling inverts it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from inference.preprocessing.geometry import functional_item
from inference.preprocessing.stacks import frame_count

logger = logging.getLogger(__name__)

_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


class DecodeError(Exception):
    """The pixel data of one instance could not be decoded; carries the reason."""


@dataclass(frozen=True)
class DecodedImage:
    """All frames of one instance: float32 (frames, rows, columns, samples)."""

    pixels: npt.NDArray[np.float32]
    monochrome1: bool


def _rescale(ds: Dataset, frame_index: int) -> tuple[float, float] | None:
    item = functional_item(ds, frame_index, "PixelValueTransformationSequence")
    if item is None or "RescaleSlope" not in item:
        return None
    return float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0))


def _exact_rescale(ds: Dataset, frames: npt.NDArray[np.generic]) -> npt.NDArray[np.float32] | None:
    """Rescale Slope and Intercept applied in float32, where that is exact.

    pydicom rescales in float64, and the result is then rounded to float32: with
    integer stored values, an integer slope and intercept and every result within
    float32's exact integers (2**24), float32 arithmetic gives the same values
    without the float64 copy (CT: slope 1, intercept -1024). ``None`` otherwise.
    """
    if "ModalityLUTSequence" in ds or frames.dtype.kind not in "iu":
        return None
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return None
    try:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    except (TypeError, ValueError):  # malformed: pydicom's path says what it makes of it
        return None
    info = np.iinfo(frames.dtype)  # type: ignore[type-var]
    bound = max(abs(int(info.min)), int(info.max)) * abs(slope) + abs(intercept)
    if not (slope.is_integer() and intercept.is_integer()) or bound >= 2**24:
        return None
    out = frames.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _modality(ds: Dataset, frames: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Apply the Modality LUT frame by frame; frames is (frames, rows, columns)."""
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        out = np.empty(frames.shape, dtype=np.float32)
        for index, frame in enumerate(frames):
            rescale = _rescale(ds, index)
            if rescale is None:
                out[index] = frame
            else:
                slope, intercept = rescale
                out[index] = frame.astype(np.float32) * slope + intercept
        return out
    exact = _exact_rescale(ds, frames)
    if exact is not None:
        return exact
    return np.asarray(apply_modality_lut(frames, ds), dtype=np.float32)


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """A shallow copy that names the transfer syntax it was read with, if the meta lacks it.

    Datasets read without file meta (no preamble, ``force=True``) hold native pixel
    data in the encoding pydicom found while reading.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return ds
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRLittleEndian
        if little
        else ExplicitVRBigEndian
    )
    copied = copy.copy(ds)
    copied.file_meta = FileMetaDataset(meta or Dataset())
    copied.file_meta.TransferSyntaxUID = syntax
    return copied


def decode(ds: Dataset) -> DecodedImage:
    """Decode all frames of an instance into physical values.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image instance with pixel data.

    Returns
    -------
    DecodedImage
        Pixels as float32 (frames, rows, columns, samples): one sample after the
        Modality LUT for monochrome images, three (RGB) for colour images.

    Raises
    ------
    DecodeError
        When the transfer syntax has no decoder here, the data is truncated, or the
        photometric interpretation is not one the pipeline handles.
    """
    ds = _with_transfer_syntax(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    n_frames = frame_count(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        array = pixel_array(ds)  # YBR_FULL(_422) comes back as RGB
    except Exception as exc:  # decoders raise many types; the reason is what counts
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DecodeError(f"pixel data not decodable ({syntax}): {exc}") from exc
    if n_frames == 1:
        array = array[np.newaxis]
    if samples == 1:
        if array.ndim != 3:
            raise DecodeError(f"unexpected decoded shape {array.shape} for {n_frames} frame(s)")
        if photometric == "PALETTE COLOR":
            rgb = np.asarray(apply_color_lut(array, ds), dtype=np.float32)
            return DecodedImage(rgb.reshape(*array.shape, 3), monochrome1=False)
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise DecodeError(f"PhotometricInterpretation {photometric!r} with one sample")
        values = _modality(ds, array)
        return DecodedImage(values[..., np.newaxis], monochrome1=photometric == "MONOCHROME1")
    if samples == 3 and array.ndim == 4:
        return DecodedImage(array.astype(np.float32), monochrome1=False)
    raise DecodeError(f"SamplesPerPixel {samples} ({photometric}) not supported")


def to_channels(frame: npt.NDArray[np.float32], channels: int) -> npt.NDArray[np.float32]:
    """Make a (rows, columns, samples) frame have the model's channel count.

    Grey is replicated to RGB; RGB becomes grey by ITU-R BT.601 luma.

    Raises
    ------
    ValueError
        When no conversion between the two channel counts exists.
    """
    samples = frame.shape[-1]
    if samples == channels:
        return frame
    if samples == 1:
        return np.repeat(frame, channels, axis=-1)
    if samples == 3 and channels == 1:
        return (frame @ _LUMA)[..., np.newaxis]
    raise ValueError(f"cannot convert {samples} samples to {channels} model channels")
