"""Heatmaps: the CAM of a positive label as an image any viewer shows.

The Secondary Capture is the source frame, windowed as the source says, with the
map fused over it in colour (transparent where the map is low), in its own series
described as an AI overlay. On images of at least 256 pixels a side, the label,
the model and "NOT FOR CLINICAL USE" (where the model says so) are also burned into
the top left corner, so that the image says what it is even when printed, exported
or shown without its header. Every viewer, from a PACS web viewer to a workstation,
shows it without special support. The optional Parametric Map carries the raw
values (0 to 1) on the source frame's geometry for viewers that overlay it
themselves; it needs a Frame of Reference.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

from inference import Heatmap, ModelIdentity
from sr_writer.content import (
    ascii_text,
    character_set,
    content_label,
    copy_laterality,
    copy_source_context,
    manufacturer,
    series_description,
)
from sr_writer.enum import ObjectKind
from sr_writer.errors import HIGHDICOM_REJECTIONS, UnsupportedSourceError
from sr_writer.options import ResultOptions
from sr_writer.sources import ImageFrame, SourceSeries
from sr_writer.uids import derive_uid

SC_SERIES_NUMBER = 9103
PM_SERIES_NUMBER = 9104
OVERLAY_OPACITY = 0.5
"""Opacity of the colour map where the heatmap is at its maximum."""
OVERLAY_FLOOR = 0.2
"""Heatmap values below this stay fully transparent, so the anatomy shows."""
BURN_IN_MINIMUM = 256
"""Smallest image side, in pixels, that gets the burned-in caption."""

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
"""Patient axes (LPS): letter for the positive and the negative direction."""
_ORIENTATION_MINIMUM = 0.25


def build_overlay(
    heatmap: Heatmap,
    sources: SourceSeries,
    model: ModelIdentity,
    options: ResultOptions,
    instance_number: int,
) -> hd.sc.SCImage:
    """Fuse one heatmap over its source frame as an RGB Secondary Capture.

    Parameters
    ----------
    heatmap: inference.Heatmap
        Values in [0, 1] at the source frame's resolution.
    sources: SourceSeries
        The source instances.
    model: ModelIdentity
        The model, named in the series description.
    options: ResultOptions
        Node labelling and UID root.
    instance_number: int
        Instance Number within the overlay series.

    Returns
    -------
    highdicom.sc.SCImage
        The fused image, referencing its source frame.

    Raises
    ------
    UnsupportedSourceError
        If the frame's pixels cannot be decoded.
    SourceMismatchError
        If the heatmap's frame is not among the sources.
    ValueError
        If the heatmap's shape differs from its frame's.
    """
    frame = sources.frame(heatmap.frame)
    _check_shape(heatmap, frame)
    sc_series_uid, sc_sop_uid = _uids(heatmap, sources, model, options, ObjectKind.HEATMAP_SC)
    rgb = fuse(_display_gray(frame), heatmap.values)
    orientation = _patient_orientation(frame)
    burned = burn_in(rgb, _caption(heatmap, model))
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=frame.dataset,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=sc_series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sc_sop_uid,
        instance_number=instance_number,
        manufacturer=ascii_text(manufacturer(model, options)),
        pixel_spacing=frame.geometry.pixel_spacing,  # type: ignore[arg-type]  # annotated int, takes mm
        # highdicom takes one letter per direction; the full value is set below.
        patient_orientation=(orientation[0][:1], orientation[1][:1]) if orientation else ("L", "F"),
        series_description=series_description(model, "overlay"),
        specific_character_set=character_set(frame.dataset),
        institution_name=options.institution_name,
        manufacturer_model_name=ascii_text(model.name),
        software_versions=ascii_text(model.version),
    )
    image.ImageComments = ascii_text(
        f"AI overlay: class activation map of {heatmap.label.name} by {model.name} "
        f"{model.version}, fused over the source image"
    )[:10240]
    image.BurnedInAnnotation = "YES" if burned else "NO"
    # Oblique letters as they are; empty (Type 2: unknown) rather than a guess.
    image.PatientOrientation = list(orientation) if orientation else []
    copy_laterality(image, frame.dataset)
    image.SourceImageSequence = [_source_reference(frame)]
    copy_source_context(image, frame.dataset)
    return image


def build_parametric_map(
    heatmap: Heatmap,
    sources: SourceSeries,
    model: ModelIdentity,
    options: ResultOptions,
    instance_number: int,
) -> hd.pm.ParametricMap:
    """Write one heatmap's raw values as a Parametric Map on its frame's geometry.

    Parameters
    ----------
    heatmap: inference.Heatmap
        Values in [0, 1] at the source frame's resolution.
    sources: SourceSeries
        The source instances.
    model: ModelIdentity
        The model.
    options: ResultOptions
        Node labelling and UID root.
    instance_number: int
        Instance Number within the map series.

    Returns
    -------
    highdicom.pm.ParametricMap
        The map.

    Raises
    ------
    UnsupportedSourceError
        If the sources have no Frame of Reference or highdicom rejects them.
    SourceMismatchError
        If the heatmap's frame is not among the sources.
    ValueError
        If the heatmap's shape differs from its frame's.
    """
    problem = sources.spatial_problem()
    if problem is not None:
        raise UnsupportedSourceError("Parametric Map", problem)
    frame = sources.frame(heatmap.frame)
    _check_shape(heatmap, frame)
    if frame.geometry.thickness is None:
        raise UnsupportedSourceError("Parametric Map", "source has no Slice Thickness")
    pm_series_uid, pm_sop_uid = _uids(heatmap, sources, model, options, ObjectKind.PARAMETRIC_MAP)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CAM",
        lut_explanation=ascii_text(f"class activation map of {heatmap.label.name}")[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    positions, orientation, measures = _frame_geometry(frame)
    try:
        parametric_map = hd.pm.ParametricMap(
            source_images=[frame.dataset],
            pixel_array=np.ascontiguousarray(heatmap.values, dtype=np.float32)[np.newaxis],
            series_instance_uid=pm_series_uid,
            series_number=PM_SERIES_NUMBER,
            sop_instance_uid=pm_sop_uid,
            instance_number=instance_number,
            manufacturer=ascii_text(manufacturer(model, options)),
            manufacturer_model_name=ascii_text(model.name),
            software_versions=ascii_text(model.version),
            device_serial_number=ascii_text(options.device_name),
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(
                    window_center=0.5, window_width=1.0, window_explanation="CAM 0 to 1"
                )
            ],
            content_label=content_label(model),
            content_qualification=(
                hd.ContentQualificationValues.RESEARCH
                if model.not_for_clinical_use
                else hd.ContentQualificationValues.PRODUCT
            ),
            series_description=series_description(model, "heatmap"),
            specific_character_set=character_set(frame.dataset),
            plane_positions=positions,
            plane_orientation=orientation,
            pixel_measures=measures,
        )
    except HIGHDICOM_REJECTIONS as exc:
        raise UnsupportedSourceError(
            "Parametric Map", f"highdicom rejects the sources: {exc!r}"
        ) from exc
    copy_laterality(parametric_map, frame.dataset)
    copy_source_context(parametric_map, frame.dataset)
    return parametric_map


def fuse(gray: npt.NDArray[np.float64], values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Blend a jet-coloured map over a gray image in [0, 1]; RGB uint8 out.

    Parameters
    ----------
    gray: numpy.ndarray
        Display values in [0, 1], shape (rows, columns).
    values: numpy.ndarray
        Heatmap in [0, 1], same shape.

    Returns
    -------
    numpy.ndarray
        uint8, shape (rows, columns, 3), C-contiguous.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if gray.shape != values.shape:
        raise ValueError(f"gray image {gray.shape} and heatmap {values.shape} differ in shape")
    v = np.clip(values.astype(np.float64), 0.0, 1.0)
    colour = np.stack(
        [np.clip(1.5 - np.abs(4.0 * v - offset), 0.0, 1.0) for offset in (3.0, 2.0, 1.0)],
        axis=-1,
    )
    alpha = OVERLAY_OPACITY * np.clip((v - OVERLAY_FLOOR) / (1.0 - OVERLAY_FLOOR), 0.0, 1.0)
    alpha = alpha[..., np.newaxis]
    blended = gray[..., np.newaxis] * (1.0 - alpha) + colour * alpha
    return np.ascontiguousarray(np.round(blended * 255.0), dtype=np.uint8)


def burn_in(rgb: npt.NDArray[np.uint8], lines: list[str]) -> bool:
    """Write text lines into the top left corner of an RGB image, in place.

    White on a dark outline, sized to the image, so it reads over any anatomy.

    Parameters
    ----------
    rgb: numpy.ndarray
        uint8, shape (rows, columns, 3), C-contiguous; changed in place.
    lines: list[str]
        The text, one entry a line.

    Returns
    -------
    bool
        Whether the text was written: images under ``BURN_IN_MINIMUM`` pixels a
        side are left alone, the text would hide them.

    Raises
    ------
    ValueError
        If ``rgb`` is not an RGB uint8 image.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"burn_in needs an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
    rows, columns = rgb.shape[:2]
    if min(rows, columns) < BURN_IN_MINIMUM:
        return False
    size = max(10, min(rows, columns) // 36)
    image = Image.fromarray(rgb)
    ImageDraw.Draw(image).multiline_text(
        (size // 2, size // 2),
        "\n".join(ascii_text(line) for line in lines),
        fill=(255, 255, 255),
        font=ImageFont.load_default(size=size),
        stroke_width=max(1, size // 8),
        stroke_fill=(0, 0, 0),
    )
    rgb[...] = np.asarray(image)
    return True


def _caption(heatmap: Heatmap, model: ModelIdentity) -> list[str]:
    lines = [f"AI overlay: {heatmap.label.name}", f"{model.name} {model.version}"]
    if model.not_for_clinical_use:
        lines.append("NOT FOR CLINICAL USE")
    return lines


def _check_shape(heatmap: Heatmap, frame: ImageFrame) -> None:
    if heatmap.values.shape != frame.shape:
        raise ValueError(
            f"heatmap of {heatmap.label.name!r} has shape {heatmap.values.shape}, its frame "
            f"{frame.sop_instance_uid} #{frame.frame_number} has {frame.shape}"
        )


def _display_gray(frame: ImageFrame) -> npt.NDArray[np.float64]:
    """The frame as a radiologist first sees it, scaled to [0, 1]."""
    values = frame.pixels()
    if values.ndim == 3:  # colour source: fuse over its luminance
        values = values.mean(axis=-1)
    window = _window(frame.dataset)
    if window is None:
        low, high = np.percentile(values, (1.0, 99.0))
    else:
        center, width = window
        low, high = center - width / 2.0, center + width / 2.0
    gray = np.clip((values - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    if frame.dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        gray = 1.0 - gray
    return gray


def _window(dataset: Dataset) -> tuple[float, float] | None:
    """The source's first VOI window (top level or shared functional group)."""
    holders = [dataset]
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and "FrameVOILUTSequence" in shared[0]:
        holders.append(shared[0].FrameVOILUTSequence[0])
    for holder in holders:
        if "WindowCenter" in holder and "WindowWidth" in holder:
            center, width = _first(holder.WindowCenter), _first(holder.WindowWidth)
            if width > 0:
                return center, width
    return None


def _first(value: object) -> float:
    """The first of a possibly multi-valued numeric attribute."""
    return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[arg-type]


def _patient_orientation(frame: ImageFrame) -> tuple[str, str] | None:
    """Patient Orientation for rows and columns: from the cosines, else as stated.

    Oblique directions get several letters, most significant first ("LP").
    ``None`` where the source says nothing about orientation.
    """
    cosines = frame.geometry.orientation
    if cosines is not None:
        return _letters(cosines[:3]), _letters(cosines[3:])
    stated = frame.dataset.get("PatientOrientation")
    if stated is not None and len(stated) == 2:
        return str(stated[0]), str(stated[1])
    return None


def _letters(vector: tuple[float, ...]) -> str:
    order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
    letters = [
        _AXIS_LETTERS[axis][0 if vector[axis] > 0 else 1]
        for axis in order
        if abs(vector[axis]) >= _ORIENTATION_MINIMUM
    ]
    return "".join(letters)


def _source_reference(frame: ImageFrame) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = frame.dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = frame.sop_instance_uid
    if frame.is_multi_frame:
        item.ReferencedFrameNumber = frame.frame_number
    return item


def _frame_geometry(
    frame: ImageFrame,
) -> tuple[
    list[hd.PlanePositionSequence] | None,
    hd.PlaneOrientationSequence | None,
    hd.PixelMeasuresSequence | None,
]:
    """Plane geometry of a multi-frame source's frame, which highdicom cannot infer.

    Single-frame sources return ``None`` throughout: highdicom reads their geometry.
    """
    if not frame.is_multi_frame:
        return None, None, None
    position = frame.geometry.position
    cosines = frame.geometry.orientation
    spacing = frame.geometry.pixel_spacing
    if position is None or cosines is None or spacing is None:
        raise UnsupportedSourceError(
            "Parametric Map",
            f"frame {frame.frame_number} of {frame.sop_instance_uid} lacks plane geometry",
        )
    patient = hd.CoordinateSystemNames.PATIENT
    return (
        [hd.PlanePositionSequence(patient, position)],
        hd.PlaneOrientationSequence(patient, cosines),
        hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=frame.geometry.thickness),
    )


def _uids(
    heatmap: Heatmap,
    sources: SourceSeries,
    model: ModelIdentity,
    options: ResultOptions,
    kind: ObjectKind,
) -> tuple[str, str]:
    """Series and SOP Instance UIDs of one heatmap object, the same on every re-run."""
    study, series = sources.study_instance_uid, sources.series_instance_uid
    series_uid = derive_uid(options.uid_root, study, series, model, kind, "series")
    sop_uid = derive_uid(
        options.uid_root,
        study,
        series,
        model,
        kind,
        heatmap.label.name,
        heatmap.frame.sop_instance_uid,
        str(heatmap.frame.frame_number),
    )
    return series_uid, sop_uid
