"""The SR: a TID 1500 Measurement Report that a radiologist can read in a viewer.

One Comprehensive 3D SR per study and model. The model is the observer (a device
named by model name and version), the procedure reported follows the modality, and
the image library lists every source image. Viewers such as OHIF draw planar regions
and ignore volumetric segment references, so every finding carries a closed
POLYLINE on a key image, referencing the exact source instance and frame, with its
numbers beside it:

- segmentation: per segment, the outline of its largest connected region on the
  slice where the segment is largest, with its area on that slice and its volume;
  where a SEG was written, also a volumetric group referencing the SEG segment
  (volume, and the area of every slice when the model gives no slice spacing);
- detection: per box, the box as a closed polyline with its score;
- classification: per positive label, the outline of the heatmap's hot region
  (values at or above half the map's maximum) on the heatmap's frame, or the whole
  key image where the model gives no heatmap, with "present", the probability and
  the threshold.

Labels the model did not find get a measurement group saying "absent" (with the
probability and threshold for classification). Probabilities, scores and thresholds
are written in percent so that viewers that print one decimal show them usefully.

No findings: when the model finds nothing at all, the report holds one planar group
on the key image (the middle frame of the series the model read), whose region is
the border of that whole image, whose finding is DCM 111241 "All algorithms
succeeded; without findings", and whose qualitative evaluations say "absent" for
every label. A text item is not drawn by OHIF; this region is, with its label, on
the image that was read, so a reader sees that the model ran and found nothing.

Objects that could not be written (a SEG for sources without a Frame of Reference)
make the report PARTIAL: the Completion Flag Description and a text comment in the
report's qualitative evaluations say why.
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
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.sr.codedict import codes

from inference import Classification, Detection, Label, Prediction, Segmentation
from sr_writer import content
from sr_writer.content import ascii_text, measurement, to_code
from sr_writer.contour import largest_outline
from sr_writer.enum import ObjectKind
from sr_writer.errors import UnsupportedSourceError
from sr_writer.options import ResultOptions
from sr_writer.seg import SegmentationResult
from sr_writer.sources import SourceFrame, SourceSeries
from sr_writer.uids import derive_uid

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9101
HOT_FRACTION = 0.5
"""A heatmap's hot region: values at or above this fraction of its maximum."""

_PERCENT = 100.0
_NO_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings
_QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_COMMENT = CodedConcept("121106", "DCM", "Comment")
_LO_LENGTH = 64

Group = (
    PlanarROIMeasurementsAndQualitativeEvaluations
    | VolumetricROIMeasurementsAndQualitativeEvaluations
    | MeasurementsAndQualitativeEvaluations
)


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
        frame: SourceFrame,
        points: npt.NDArray[np.float64],
        finding: CodedConcept,
        measurements: Sequence[Measurement],
        evaluations: Sequence[QualitativeEvaluation],
        category: CodedConcept | None = None,
    ) -> PlanarROIMeasurementsAndQualitativeEvaluations:
        region = ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=frame.region_source(),
        )
        return PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=finding,
            finding_category=category,
            algorithm_id=content.algorithm(self.prediction.model),
            measurements=list(measurements),
            qualitative_evaluations=list(evaluations),
        )

    def absent(
        self, label: Label, measurements: Sequence[Measurement] = ()
    ) -> MeasurementsAndQualitativeEvaluations:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=self.tracking(f"{label.name} absent", label.name, "absent"),
            finding_type=to_code(label.finding),
            finding_category=to_code(label.category),
            algorithm_id=content.algorithm(self.prediction.model),
            measurements=list(measurements) or None,
            qualitative_evaluations=[_evaluation(label, present=False)],
        )

    def key_frame(self) -> SourceFrame:
        """The image a report without findings is drawn on: the series' middle frame."""
        frames = self.prediction.frames
        return self.sources.frame(frames[len(frames) // 2])

    def no_findings(
        self, labels: Sequence[Label]
    ) -> PlanarROIMeasurementsAndQualitativeEvaluations:
        frame = self.key_frame()
        return self.planar(
            self.tracking(f"No findings ({self.prediction.model.name})", "no-findings"),
            frame,
            _frame_border(frame),
            CodedConcept(_NO_FINDINGS.value, _NO_FINDINGS.scheme_designator, _NO_FINDINGS.meaning),
            measurements=(),
            evaluations=[_evaluation(label, present=False) for label in labels],
        )


def build_report(
    prediction: Prediction,
    sources: SourceSeries,
    options: ResultOptions,
    *,
    segmentation: SegmentationResult | None = None,
    omitted: Sequence[UnsupportedSourceError] = (),
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
        groups, labels = _classification_groups(report, prediction), _scored_labels(prediction)
    elif isinstance(prediction, Segmentation):
        groups, labels = _segmentation_groups(report, prediction, segmentation), prediction.labels
    elif isinstance(prediction, Detection):
        groups, labels = _detection_groups(report, prediction), prediction.labels
    else:
        raise TypeError(f"unsupported prediction type {type(prediction).__name__}")
    if not any(isinstance(g, PlanarROIMeasurementsAndQualitativeEvaluations) for g in groups):
        groups.append(report.no_findings(labels))
    model = prediction.model
    measurement_report = hd.sr.MeasurementReport(
        observation_context=content.observation_context(model, options, report.uid("device")),
        procedure_reported=content.procedure_code(sources.reference),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=sources.library_views(),
    )
    if omitted:
        _add_comments(measurement_report, [str(error) for error in omitted])
    evidence = list(sources.datasets)
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
    if omitted:
        sr.CompletionFlagDescription = ascii_text("; ".join(map(str, omitted)))[:_LO_LENGTH]
    content.copy_deidentification(sr, sources.reference)
    return sr


def _classification_groups(report: _Report, prediction: Classification) -> list[Group]:
    heatmaps = {heatmap.label.name: heatmap for heatmap in prediction.heatmaps}
    groups: list[Group] = []
    for score in prediction.scores:
        label = score.label
        numbers = [
            measurement(
                content.PROBABILITY, score.probability * _PERCENT, content.PERCENT, prediction.model
            ),
            measurement(
                content.THRESHOLD, label.threshold * _PERCENT, content.PERCENT, prediction.model
            ),
        ]
        if not score.positive:
            groups.append(report.absent(label, numbers))
            continue
        heatmap = heatmaps.get(label.name)
        if heatmap is None:
            frame = report.key_frame()
            points = _frame_border(frame)
        else:
            frame = report.sources.frame(heatmap.frame)
            points = _hot_region(heatmap.values, frame)
        groups.append(
            report.planar(
                report.tracking(label.name, label.name),
                frame,
                points,
                to_code(label.finding),
                numbers,
                [_evaluation(label, present=True)],
                category=to_code(label.category),
            )
        )
    return groups


def _segmentation_groups(
    report: _Report, prediction: Segmentation, segmentation: SegmentationResult | None
) -> list[Group]:
    groups: list[Group] = []
    model = prediction.model
    for index, label in enumerate(prediction.labels):
        mask = prediction.masks[..., index]
        per_frame = mask.sum(axis=(1, 2))
        if not per_frame.any():
            groups.append(report.absent(label))
            continue
        key = int(np.argmax(per_frame))
        frame = report.sources.frame(prediction.frames[key])
        outline = largest_outline(mask[key])
        if outline is None:  # unreachable: the key slice holds the most pixels
            raise ValueError(f"no outline on key slice {key} of label {label.name!r}")
        pixel_area = _pixel_area(prediction, frame)
        volume = prediction.voxel_volume_mm3
        numbers = []
        if pixel_area is not None:
            numbers.append(
                measurement(
                    content.AREA,
                    per_frame[key] * pixel_area,
                    content.SQUARE_MM,
                    model,
                    frame.measurement_source(),
                )
            )
        if volume is not None:
            numbers.append(
                measurement(content.VOLUME, mask.sum() * volume, content.CUBIC_MM, model)
            )
        groups.append(
            report.planar(
                report.tracking(label.name, label.name),
                frame,
                outline.points,
                to_code(label.finding),
                numbers,
                [_evaluation(label, present=True)],
                category=to_code(label.category),
            )
        )
        if segmentation is not None:
            groups.append(
                _volumetric(report, prediction, segmentation, label, per_frame, pixel_area)
            )
    return groups


def _volumetric(
    report: _Report,
    prediction: Segmentation,
    segmentation: SegmentationResult,
    label: Label,
    per_frame: npt.NDArray[np.int64],
    pixel_area: float | None,
) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The group that references the SEG segment, with the volume or per-slice areas."""
    model = prediction.model
    numbers = []
    volume = prediction.voxel_volume_mm3
    if volume is not None:
        numbers.append(
            measurement(content.VOLUME, per_frame.sum() * volume, content.CUBIC_MM, model)
        )
    elif pixel_area is not None:
        for position in np.flatnonzero(per_frame):
            frame = report.sources.frame(prediction.frames[position])
            numbers.append(
                measurement(
                    content.AREA,
                    per_frame[position] * pixel_area,
                    content.SQUARE_MM,
                    model,
                    frame.measurement_source(),
                )
            )
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
        tracking_identifier=report.tracking(f"{label.name} segment", label.name, "segment"),
        referenced_segment=segment,
        finding_type=to_code(label.finding),
        finding_category=to_code(label.category),
        algorithm_id=content.algorithm(model),
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
            prediction.model,
            frame.measurement_source(),
        )
        groups.append(
            report.planar(
                report.tracking(f"{box.label.name} #{number}", box.label.name, str(number)),
                frame,
                points,
                to_code(box.label.finding),
                [score],
                [_evaluation(box.label, present=True)],
                category=to_code(box.label.category),
            )
        )
    groups.extend(report.absent(label) for label in prediction.labels if label.name not in found)
    return groups


def _scored_labels(prediction: Classification) -> tuple[Label, ...]:
    return tuple(score.label for score in prediction.scores)


def _evaluation(label: Label, *, present: bool) -> QualitativeEvaluation:
    value = content.PRESENT if present else content.ABSENT
    return QualitativeEvaluation(name=to_code(label.finding), value=value)


def _pixel_area(prediction: Segmentation, frame: SourceFrame) -> float | None:
    spacing = prediction.pixel_spacing_mm or frame.pixel_spacing()
    if spacing is None:
        return None
    return spacing[0] * spacing[1]


def _frame_border(frame: SourceFrame) -> npt.NDArray[np.float64]:
    rows, columns = frame.shape
    return np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=np.float64)


def _box_polyline(
    bounds: tuple[float, float, float, float], frame: SourceFrame
) -> npt.NDArray[np.float64] | None:
    """The box clipped to its frame as a closed (column, row) polyline, if any is left."""
    rows, columns = frame.shape
    row_min, column_min = max(bounds[0], 0.0), max(bounds[1], 0.0)
    row_max, column_max = min(bounds[2], float(rows)), min(bounds[3], float(columns))
    if row_max <= row_min or column_max <= column_min:
        return None
    return np.array(
        [
            [column_min, row_min],
            [column_max, row_min],
            [column_max, row_max],
            [column_min, row_max],
            [column_min, row_min],
        ],
        dtype=np.float64,
    )


def _hot_region(values: npt.NDArray[np.float32], frame: SourceFrame) -> npt.NDArray[np.float64]:
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
        name=_QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=_COMMENT,
                value=ascii_text(comment),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for comment in comments
        ]
    )
    report[0].ContentSequence.append(container)
