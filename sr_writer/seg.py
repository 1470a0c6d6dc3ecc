"""The SEG: the model's masks as a DICOM Segmentation over the exact source frames.

One segment per label with a non-empty mask, numbered in label order; a label whose
mask is empty is reported absent in the SR and left out here, and when every mask is
empty no SEG is written (a SEG without segments is invalid). Binary by default;
fractional writes the model's probabilities where it gives them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from inference import Label, ModelIdentity, Segmentation
from sr_writer.content import (
    algorithm_sequence,
    ascii_text,
    character_set,
    content_label,
    copy_source_context,
    manufacturer,
    series_description,
    to_code,
)
from sr_writer.enum import ObjectKind, SegmentationKindValues
from sr_writer.errors import HIGHDICOM_REJECTIONS, UnsupportedSourceError
from sr_writer.iod_lookup import remember_iod_lookups
from sr_writer.options import ResultOptions
from sr_writer.sources import ImageFrame, SourceSeries, with_type2_attributes, with_values
from sr_writer.uids import derive_uid

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9102
SEGMENT_COLORS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
"""sRGB display colours by segment number (cycled): distinct on grey images. Viewers
show a segment without a Recommended Display CIELab Value in a colour of their own
choosing, and OHIF warns the reader about it on every load."""


@dataclass(frozen=True)
class SegmentationResult:
    """A written SEG and the segment number given to each label."""

    dataset: hd.seg.Segmentation
    segment_numbers: dict[str, int]


def build_segmentation(
    prediction: Segmentation, sources: SourceSeries, options: ResultOptions
) -> SegmentationResult | None:
    """Write the prediction's non-empty masks as a SEG.

    Parameters
    ----------
    prediction: inference.Segmentation
        Masks, one frame per source frame named in ``prediction.frames``.
    sources: SourceSeries
        The source instances.
    options: ResultOptions
        Node labelling, binary or fractional, UID root.

    Returns
    -------
    SegmentationResult | None
        The SEG, or ``None`` when every mask is empty.

    Raises
    ------
    UnsupportedSourceError
        If the sources cannot carry a SEG: no Frame of Reference UID, frames spread
        over several multi-frame instances, or a source highdicom rejects.
    SourceMismatchError
        If a frame the prediction names is not among the sources.
    ValueError
        If the masks do not match the frames and labels in shape.
    """
    remember_iod_lookups()
    _check_shape(prediction)
    counts = prediction.voxel_counts()
    present = [i for i in range(len(prediction.labels)) if counts[:, i].any()]
    if not present:
        logger.info("all %d masks empty: no SEG written", len(prediction.labels))
        return None
    problem = sources.spatial_problem()
    if problem is not None:
        raise UnsupportedSourceError("SEG", problem)
    frames = [sources.frame(ref) for ref in prediction.frames]
    source_images, positions = _layout(frames)
    kind = _effective_kind(prediction, options.segmentation_kind)
    pixels = _pixel_array(prediction, kind, present, positions, _frame_count(source_images))
    model = prediction.model
    descriptions = [
        _description(number, prediction.labels[index], model, sources, options)
        for number, index in enumerate(present, start=1)
    ]
    study, series = sources.study_instance_uid, sources.series_instance_uid
    # highdicom copies the patient and study modules from the first source only.
    source_images = _with_thickness(
        prediction, frames, [with_type2_attributes(source_images[0]), *source_images[1:]]
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixels,
            segmentation_type=kind.value,
            segment_descriptions=descriptions,
            series_instance_uid=derive_uid(
                options.uid_root, study, series, model, ObjectKind.SEG, "series"
            ),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=derive_uid(
                options.uid_root, study, series, model, ObjectKind.SEG, "instance"
            ),
            instance_number=1,
            manufacturer=ascii_text(manufacturer(model, options)),
            manufacturer_model_name=ascii_text(model.name),
            software_versions=ascii_text(model.version),
            device_serial_number=ascii_text(options.device_name),
            content_label=content_label(model),
            content_description=ascii_text(model.description)[:64] or None,
            series_description=series_description(model, "segmentation"),
            specific_character_set=character_set(sources.reference),
            institution_name=options.institution_name,
            omit_empty_frames=True,
        )
    except HIGHDICOM_REJECTIONS as exc:
        raise UnsupportedSourceError("SEG", f"highdicom rejects the sources: {exc!r}") from exc
    copy_source_context(seg, sources.reference)
    numbers = {prediction.labels[index].name: n for n, index in enumerate(present, start=1)}
    return SegmentationResult(dataset=seg, segment_numbers=numbers)


def _check_shape(prediction: Segmentation) -> None:
    expected = (len(prediction.frames), len(prediction.labels))
    masks = prediction.masks
    if masks is not None and (masks.ndim != 4 or (masks.shape[0], masks.shape[3]) != expected):
        raise ValueError(
            f"masks must have shape (frames={expected[0]}, rows, columns, "
            f"labels={expected[1]}), got {masks.shape}"
        )
    shape = (*prediction.shape, expected[1])
    if prediction.probabilities is not None and prediction.probabilities.shape != shape:
        raise ValueError(
            f"probabilities shape {prediction.probabilities.shape} differs from masks {shape}"
        )


def _layout(frames: list[ImageFrame]) -> tuple[list[Dataset], list[int]]:
    """The source images highdicom takes and each prediction frame's position there.

    Single-frame series: one source image per prediction frame, in prediction order.
    One multi-frame instance: that instance, positions are its frame indices.
    """
    instances = {frame.sop_instance_uid for frame in frames}
    if not any(frame.is_multi_frame for frame in frames):
        if len(instances) != len(frames):
            raise UnsupportedSourceError("SEG", "the prediction names a source image twice")
        return [frame.dataset for frame in frames], list(range(len(frames)))
    if len(instances) != 1:
        raise UnsupportedSourceError(
            "SEG", f"frames span {len(instances)} instances, one of them multi-frame"
        )
    positions = [frame.frame_number - 1 for frame in frames]
    if len(set(positions)) != len(positions):
        raise UnsupportedSourceError("SEG", "the prediction names a source frame twice")
    return [frames[0].dataset], positions


def _with_thickness(
    prediction: Segmentation, frames: list[ImageFrame], source_images: list[Dataset]
) -> list[Dataset]:
    """The source images, given a slice thickness where they lack one.

    Slice Thickness is Type 2 in CT and MR (may be empty); highdicom copies it
    into the SEG, where it is required. The model's slice spacing stands in, on
    copies, never on the caller's datasets; without it no SEG is written.
    """
    if all(frame.geometry.thickness is not None for frame in frames):
        return source_images
    thickness = prediction.slice_spacing_mm
    if thickness is None:
        raise UnsupportedSourceError(
            "SEG", "source has no Slice Thickness and the model gives no slice spacing"
        )
    return [with_values(dataset, {"SliceThickness": thickness}) for dataset in source_images]


def _frame_count(source_images: list[Dataset]) -> int:
    if len(source_images) == 1:
        return int(source_images[0].get("NumberOfFrames", 1) or 1)
    return len(source_images)


def _effective_kind(
    prediction: Segmentation, requested: SegmentationKindValues
) -> SegmentationKindValues:
    if requested is SegmentationKindValues.FRACTIONAL and prediction.probabilities is None:
        logger.warning(
            "fractional SEG requested but model %s gives no probabilities: writing binary",
            prediction.model.name,
        )
        return SegmentationKindValues.BINARY
    return requested


def _pixel_array(
    prediction: Segmentation,
    kind: SegmentationKindValues,
    present: list[int],
    positions: list[int],
    frame_count: int,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.float32]:
    """The SEG pixel array: C-contiguous (highdicom is ~7x slower on strided views)."""
    probabilities = prediction.probabilities
    if kind is SegmentationKindValues.FRACTIONAL and probabilities is not None:
        values: npt.NDArray[np.generic] = np.ascontiguousarray(
            probabilities[..., present], dtype=np.float32
        )
    elif prediction.masks is None:
        values = _segment_map(prediction, present)
    else:
        # A run of labels is a view (one label of C-contiguous masks is itself
        # C-contiguous: no copy at all); other selections copy into a C-contiguous
        # array. Viewing the bools as uint8 then costs nothing (masks of another
        # dtype are thresholded first).
        run = present == list(range(present[0], present[-1] + 1))
        chosen = slice(present[0], present[-1] + 1) if run else present
        selected = prediction.masks[..., chosen]
        if selected.dtype != np.bool_:
            selected = selected != 0
        values = np.ascontiguousarray(selected).view(np.uint8)
    if positions == list(range(frame_count)):
        return values  # type: ignore[return-value]
    full = np.zeros((frame_count, *values.shape[1:]), dtype=values.dtype)
    full[positions] = values
    return full


def _segment_map(prediction: Segmentation, present: list[int]) -> npt.NDArray[np.generic]:
    """Exclusive labels as a highdicom label-map array: segment numbers, 0 elsewhere.

    One byte per voxel (two beyond 255 segments) instead of one mask per label.
    """
    assert prediction.label_map is not None
    dtype = np.uint8 if len(present) < 256 else np.uint16
    numbers = np.zeros(len(prediction.labels) + 1, dtype=dtype)
    numbers[np.asarray(present) + 1] = np.arange(1, len(present) + 1, dtype=dtype)
    return numbers[prediction.label_map]


def _description(
    number: int, label: Label, model: ModelIdentity, sources: SourceSeries, options: ResultOptions
) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=ascii_text(label.name)[:64],
        segmented_property_category=to_code(label.category),
        segmented_property_type=to_code(label.finding),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_sequence(model),
        tracking_uid=derive_uid(
            options.uid_root,
            sources.study_instance_uid,
            sources.series_instance_uid,
            model,
            ObjectKind.SEG,
            label.name,
        ),
        tracking_id=ascii_text(label.name)[:64],
        display_color=hd.color.CIELabColor.from_rgb(
            *SEGMENT_COLORS[(number - 1) % len(SEGMENT_COLORS)]
        ),
    )
