"""The SR: a TID 1500 Measurement Report that a radiologist can read in a viewer.

One Comprehensive 3D SR per study and model. The model is the observer (a device
named by model name and version), the procedure reported follows the modality, and
the image library lists every source image. Viewers such as OHIF draw planar regions
and ignore volumetric segment references, so every finding carries a closed
POLYLINE on a key image, referencing the exact source instance and frame, with its
numbers beside it:

- segmentation: per segment, the outline of its largest connected region on the
  slice where the segment is largest, with its area on that slice; where a SEG was
  written, a volumetric group referencing the SEG segment carries the volume,
  otherwise the outline group does. A 2D model (no slice spacing, so no volume)
  gets an outline with its area on every slice where the segment is present;
- detection: per box, the box as a closed polyline with its score;
- classification: per positive label, the outline of the heatmap's hot region
  (values at or above half the map's maximum) on the heatmap's frame, or a frame
  around the key image (as for absent labels, below) where the model gives no
  heatmap, with "present", the probability and the threshold.

OHIF merges measurement groups by Tracking UID and fails to load a report in which
a merged finding has no region, so every group is drawable: the segment group
shares its outline group's Tracking UID (they describe one finding), and labels
that were not found are drawn too.

Absent labels and reports without findings: every label the model did not find
gets a planar group on the key image (the middle frame of the series the model
read) whose region is a frame around that image, whose tracking identifier is
"<label>: not found", and whose qualitative evaluation says the finding is "Absent"
(SCT 272519000), with the threshold the label fell short of (and for classification
its probability). A report in which the model found nothing is therefore never
empty: on the image the model read, one frame per label is drawn, labelled with
its numbers, and the "not found" identifier and "Absent" evaluation state the
result for readers that list them. OHIF labels a region with its NUM items only
and prints a zero as an empty value, so no zero volume or count is written; a text
item would not do either: OHIF does not draw it.

Frames around the key image must stay readable when there are several (a normal
study has one per label): identical frames would coincide, and OHIF, which anchors
a region's label box at the middle of its right side, would print their label
boxes over each other. So the n frames on one key image differ: the first is the
border of the whole image; each next one lies inside the one before, its left,
right and bottom sides inset by a small step (the shorter side / 8n^2) and its
top lowered so that the middle of its right side, and with it the label box, sits
lower by half the image height / n. Outlines and label boxes are thus apart at
the viewer's fit-to-window zoom for a handful of labels (more need zooming in).
The order is the model's label order; positive classification labels without a
heatmap take their place in it.

Probabilities, scores and thresholds are written in percent so that viewers that
print one or two decimals show them usefully. Objects that could not be written (a SEG for
sources without a Frame of Reference) make the report PARTIAL: the Completion Flag
Description and a text comment in the report's qualitative evaluations say why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.sr import (
    CodedConcept,
    ImageRegion,
    Measurement,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference import Classification, Detection, Label, Prediction, Segmentation
from sr_writer import content
from sr_writer.content import ascii_text, measurement, to_code
from sr_writer.contour import largest_outline
from sr_writer.enum import ObjectKind
from sr_writer.errors import UnsupportedSourceError
from sr_writer.library import image_library, insert_library
from sr_writer.options import ResultOptions
from sr_writer.seg import SegmentationResult
from sr_writer.sources import ImageFrame, SourceSeries
from sr_writer.uids import derive_uid, device_uid

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9101
HOT_FRACTION = 0.5
"""A heatmap's hot region: values at or above this fraction of its maximum."""

_PERCENT = 100.0
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = CodedConcept("121106", "DCM", "Comment")
_LO_LENGTH = 64

Group = (
    PlanarROIMeasurementsAndQualitativeEvaluations
    | VolumetricROIMeasurementsAndQualitativeEvaluations
)
Slot = tuple[int, int]
"""(position, count) of a frame among the frames drawn around one key image."""


@dataclass(frozen=True)
class _Report:
    """What every group of one report needs: the prediction, sources and options."""

    prediction: Prediction
    sources: SourceSeries
    options: ResultOptions

    def uid(self, *parts: str) -> str:
        return derive_uid(
            self.options.uid_root,
            self.sources.study_instance_uid,
            self.sources.series_instance_uid,
            self.prediction.model,
            ObjectKind.SR,
            *parts,
        )

    def tracking(self, identifier: str, *parts: str) -> TrackingIdentifier:
        return TrackingIdentifier(
            uid=self.uid("tracking", *parts), identifier=ascii_text(identifier)
        )

    def planar(
        self,
        tracking: TrackingIdentifier,
        frame: ImageFrame,
        points: npt.NDArray[np.float64],
        label: Label,
        measurements: Sequence[Measurement],
        *,
        present: bool,
    ) -> PlanarROIMeasurementsAndQualitativeEvaluations:
        """A finding drawn on one frame: a closed polyline with its numbers."""
        region = ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=frame.region_source(),
        )
        return PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=to_code(label.finding),
            finding_category=to_code(label.category),
            algorithm_id=content.algorithm(self.prediction.model),
            measurements=list(measurements),
            qualitative_evaluations=[_evaluation(label, present=present)],
        )

    def absent(
        self, label: Label, slot: Slot, probability: float | None = None
    ) -> PlanarROIMeasurementsAndQualitativeEvaluations:
        """A label not found: "absent", drawn as a frame around the key image.

        ``slot`` is (position, count) among the frames around the key image, which
        makes each one's outline and label box its own (see `_key_image_frame`).
        Its numbers are the probability (where the model gives one) and the
        threshold it fell short of: OHIF labels a region by its numbers only and
        prints a zero as an empty value, so a zero volume or count would show as
        "Volume:  mm3".
        """
        frame = self.key_frame()
        numbers = [] if probability is None else [_percent(content.PROBABILITY, probability)]
        numbers.append(_percent(content.THRESHOLD, label.threshold))
        return self.planar(
            self.tracking(f"{label.name}: not found", label.name, "absent"),
            frame,
            _key_image_frame(frame, slot),
            label,
            numbers,
            present=False,
        )

    def key_frame(self) -> ImageFrame:
        """The image absent labels are drawn on: the middle frame the model read.

        Raises
        ------
        ValueError
            If the prediction names no frames.
        """
        frames = self.prediction.frames
        if not frames:
            raise ValueError(f"prediction of model {self.prediction.model.name} names no frames")
        return self.sources.frame(frames[len(frames) // 2])


def build_report(
    prediction: Prediction,
    sources: SourceSeries,
    options: ResultOptions,
    *,
    segmentation: SegmentationResult | None = None,
    omitted: Sequence[UnsupportedSourceError] = (),
    comments: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """Write the TID 1500 report for a prediction.

    Parameters
    ----------
    prediction: inference.Prediction
        Classification, segmentation or detection.
    sources: SourceSeries
        The source instances.
    options: ResultOptions
        Node labelling and UID root.
    segmentation: SegmentationResult | None
        The SEG written for a segmentation, which the volumetric groups reference.
    omitted: Sequence[UnsupportedSourceError]
        Objects that could not be written; the report says why and is PARTIAL.
    comments: Sequence[str]
        Further text for the qualitative evaluations (the report stays complete).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The report.

    Raises
    ------
    SourceMismatchError
        If the prediction names a frame that is not among the sources.
    TypeError
        If ``prediction`` is not a Classification, Segmentation or Detection.
    """
    report = _Report(prediction, sources, options)
    if isinstance(prediction, Classification):
        groups = _classification_groups(report, prediction)
    elif isinstance(prediction, Segmentation):
        groups = _segmentation_groups(report, prediction, segmentation)
    elif isinstance(prediction, Detection):
        groups = _detection_groups(report, prediction)
    else:
        raise TypeError(f"unsupported prediction type {type(prediction).__name__}")
    model = prediction.model
    measurement_report = hd.sr.MeasurementReport(
        observation_context=content.observation_context(
            model, options, device_uid(options.uid_root, options.device_name, model)
        ),
        procedure_reported=content.procedure_code(sources.reference),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    if omitted or comments:
        _add_comments(measurement_report, [*comments, *(str(error) for error in omitted)])
    evidence = [sources.reference, *sources.datasets[1:]]
    if segmentation is not None:
        evidence.append(segmentation.dataset)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=measurement_report,
        series_instance_uid=report.uid("series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=report.uid("instance"),
        instance_number=1,
        manufacturer=ascii_text(content.manufacturer(model, options)),
        is_complete=not omitted,
        institution_name=options.institution_name,
        series_description=content.series_description(model, "report"),
        specific_character_set=content.character_set(sources.reference),
    )
    insert_library(sr, image_library(sources))
    if omitted:
        sr.CompletionFlagDescription = ascii_text("; ".join(map(str, omitted)))[:_LO_LENGTH]
    content.copy_source_context(sr, sources.reference)
    return sr


def _classification_groups(report: _Report, prediction: Classification) -> list[Group]:
    heatmaps = {heatmap.label.name: heatmap for heatmap in prediction.heatmaps}
    # Drawn around the key image: absent labels, and positive ones without a heatmap.
    around = [
        index
        for index, score in enumerate(prediction.scores)
        if not score.positive or score.label.name not in heatmaps
    ]
    groups: list[Group] = []
    for index, score in enumerate(prediction.scores):
        label = score.label
        if not score.positive:
            groups.append(report.absent(label, _slot(around, index), score.probability))
            continue
        numbers = [
            _percent(content.PROBABILITY, score.probability),
            _percent(content.THRESHOLD, label.threshold),
        ]
        heatmap = heatmaps.get(label.name)
        if heatmap is None:
            frame = report.key_frame()
            points = _key_image_frame(frame, _slot(around, index))
        else:
            frame = report.sources.frame(heatmap.frame)
            points = _hot_region(heatmap.values, frame)
        groups.append(
            report.planar(
                report.tracking(label.name, label.name),
                frame,
                points,
                label,
                numbers,
                present=True,
            )
        )
    return groups


def _segmentation_groups(
    report: _Report, prediction: Segmentation, segmentation: SegmentationResult | None
) -> list[Group]:
    """Per label: its outline where it is largest, and with a SEG its segment group.

    A 2D model (no slice spacing, so no volume) gets an outline with its area on
    every slice where the label is present, each its own finding, so that a viewer
    shows each area on its own slice.
    """
    groups: list[Group] = []
    volume = prediction.voxel_volume_mm3
    counts = prediction.voxel_counts()
    empty = [i for i in range(len(prediction.labels)) if not counts[:, i].any()]
    for index, label in enumerate(prediction.labels):
        per_frame = counts[:, index]
        if not per_frame.any():
            groups.append(report.absent(label, _slot(empty, index)))
            continue
        key = int(np.argmax(per_frame))
        total = None if volume is None else _volume(int(per_frame.sum()), volume)
        key_extra = [total] if total is not None and segmentation is None else []
        groups.append(_outline(report, prediction, label, index, key, label.name, (), key_extra))
        if total is None:
            groups.extend(
                _outline(report, prediction, label, index, p, f"{label.name} ({p + 1})", (str(p),))
                for p in np.flatnonzero(per_frame).tolist()
                if p != key
            )
        if segmentation is not None:
            groups.append(
                _volumetric(report, segmentation, label, [] if total is None else [total])
            )
    return groups


def _outline(
    report: _Report,
    prediction: Segmentation,
    label: Label,
    index: int,
    position: int,
    identifier: str,
    parts: tuple[str, ...],
    extra: Sequence[Measurement] = (),
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """The outline of a label's largest region on one frame, with the label's area there."""
    frame = report.sources.frame(prediction.frames[position])
    mask = prediction.frame_mask(index, position)
    outline = largest_outline(mask)
    if outline is None:  # unreachable: only frames holding the label come here
        raise ValueError(f"label {label.name!r} is empty on frame {position + 1}")
    numbers = []
    pixel_area = _pixel_area(prediction, frame)
    if pixel_area is not None:
        area = int(np.count_nonzero(mask)) * pixel_area
        numbers.append(
            measurement(content.AREA, area, content.SQUARE_MM, frame.measurement_source())
        )
    return report.planar(
        report.tracking(identifier, label.name, *parts),
        frame,
        outline.points,
        label,
        [*numbers, *extra],
        present=True,
    )


def _percent(name: Code, fraction: float) -> Measurement:
    return measurement(name, fraction * _PERCENT, content.PERCENT)


def _volume(voxels: int, voxel_volume: float) -> Measurement:
    return measurement(content.VOLUME, voxels * voxel_volume, content.CUBIC_MM)


def _volumetric(
    report: _Report,
    segmentation: SegmentationResult,
    label: Label,
    numbers: list[Measurement],
) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The group that references the SEG segment.

    It shares the outline group's tracking identifier: OHIF merges groups by
    Tracking UID and needs a drawable region in each merged finding, and both groups
    describe the same finding. Its number (the volume, where known) therefore
    complements the outline group's area, never repeats it.
    """
    # Built by hand: highdicom's ReferencedSegment.from_segmentation fails on a SEG
    # whose segment identification sits in the shared functional groups.
    seg = segmentation.dataset
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segmentation.segment_numbers[label.name],
        source_series=hd.sr.SourceSeriesForSegmentation(
            str(report.sources.reference.SeriesInstanceUID)
        ),
    )
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        # The planar group's tracking identifier: one finding, drawn and measured.
        tracking_identifier=report.tracking(label.name, label.name),
        referenced_segment=segment,
        finding_type=to_code(label.finding),
        finding_category=to_code(label.category),
        algorithm_id=content.algorithm(report.prediction.model),
        measurements=numbers or None,
        qualitative_evaluations=[_evaluation(label, present=True)],
    )


def _detection_groups(report: _Report, prediction: Detection) -> list[Group]:
    groups: list[Group] = []
    found = set()
    for number, box in enumerate(prediction.boxes, start=1):
        frame = report.sources.frame(box.frame)
        points = _box_polyline(box.bounds, frame)
        if points is None:
            logger.warning(
                "box %d of %s lies outside its frame %s: left out",
                number,
                box.label.name,
                box.bounds,
            )
            continue
        found.add(box.label.name)
        score = measurement(
            content.SCORE,
            box.score * _PERCENT,
            content.PERCENT,
            frame.measurement_source(),
        )
        groups.append(
            report.planar(
                report.tracking(f"{box.label.name} #{number}", box.label.name, str(number)),
                frame,
                points,
                box.label,
                [score],
                present=True,
            )
        )
    missing = [label for label in prediction.labels if label.name not in found]
    groups.extend(
        report.absent(label, (position, len(missing))) for position, label in enumerate(missing)
    )
    return groups


def _evaluation(label: Label, *, present: bool) -> QualitativeEvaluation:
    value = content.PRESENT if present else content.ABSENT
    return QualitativeEvaluation(name=to_code(label.finding), value=value)


def _pixel_area(prediction: Segmentation, frame: ImageFrame) -> float | None:
    spacing = prediction.pixel_spacing_mm or frame.geometry.measuring_spacing
    if spacing is None:
        return None
    return spacing[0] * spacing[1]


def _frame_border(frame: ImageFrame) -> npt.NDArray[np.float64]:
    rows, columns = frame.shape
    return _rectangle(0.0, 0.0, float(columns), float(rows))


def _key_image_frame(frame: ImageFrame, slot: Slot) -> npt.NDArray[np.float64]:
    """The ``position``-th of ``count`` frames around one image, each apart from the others.

    The first is the image's border. Each next one lies inside the one before: its
    left, right and bottom sides move in by ``inset`` and its top comes down by
    ``inset + 2 * step``, so the middle of its right side (where OHIF anchors a
    region's label box) is ``step``, half the height / ``count``, lower than the one
    before. With ``inset`` the shorter side / ``8 * count**2``, even the last frame
    keeps a positive width and height.
    """
    position, count = slot
    if not 0 <= position < count:
        raise ValueError(f"slot {position} of {count} frames around the key image")
    rows, columns = frame.shape
    step = rows / (2 * count)
    inset = min(rows, columns) / (8 * count**2)
    return _rectangle(
        left=position * inset,
        top=position * (inset + 2 * step),
        right=columns - position * inset,
        bottom=rows - position * inset,
    )


def _slot(members: list[int], index: int) -> Slot:
    """The slot of one of the labels drawn around the key image (``members``)."""
    return members.index(index), len(members)


def _rectangle(left: float, top: float, right: float, bottom: float) -> npt.NDArray[np.float64]:
    """A closed (column, row) polyline, clockwise on the screen from the top left."""
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
        dtype=np.float64,
    )


def _box_polyline(
    bounds: tuple[float, float, float, float], frame: ImageFrame
) -> npt.NDArray[np.float64] | None:
    """The box clipped to its frame as a closed (column, row) polyline, if any is left."""
    rows, columns = frame.shape
    row_min, column_min = max(bounds[0], 0.0), max(bounds[1], 0.0)
    row_max, column_max = min(bounds[2], float(rows)), min(bounds[3], float(columns))
    if row_max <= row_min or column_max <= column_min:
        return None
    return _rectangle(column_min, row_min, column_max, row_max)


def _hot_region(values: npt.NDArray[np.float32], frame: ImageFrame) -> npt.NDArray[np.float64]:
    """Outline of the heatmap's hot region; the whole frame for a flat map."""
    if values.shape != frame.shape:
        raise ValueError(
            f"heatmap shape {values.shape} differs from its frame {frame.sop_instance_uid} "
            f"#{frame.frame_number} of shape {frame.shape}"
        )
    peak = float(values.max())
    outline = largest_outline(values >= HOT_FRACTION * peak) if peak > 0 else None
    return outline.points if outline is not None else _frame_border(frame)


def _add_comments(report: hd.sr.MeasurementReport, comments: Sequence[str]) -> None:
    """Say in the report itself what could not be written (TID 1500 row 12-14)."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=COMMENT,
                value=ascii_text(comment),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for comment in comments
        ]
    )
    report[0].ContentSequence.append(container)
