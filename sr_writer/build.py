"""`build_results`: one prediction and its sources in, the result objects out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pydicom import Dataset
from pydicom.uid import PYDICOM_ROOT_UID

from inference import Classification, Heatmap, ModelIdentity, Prediction, Segmentation
from sr_writer.content import copied_names_accepted
from sr_writer.enum import SegmentationKindValues
from sr_writer.errors import UnsupportedSourceError
from sr_writer.heatmap import build_overlay, build_parametric_map
from sr_writer.options import ResultOptions
from sr_writer.seg import SegmentationResult, build_segmentation
from sr_writer.sources import SourceSeries
from sr_writer.sr import build_report

logger = logging.getLogger(__name__)


def build_results(
    prediction: Prediction,
    source_datasets: Sequence[Dataset],
    *,
    manufacturer: str | None = None,
    device_name: str = "AINODE",
    institution_name: str | None = None,
    segmentation_kind: str | SegmentationKindValues = SegmentationKindValues.BINARY,
    parametric_map: bool = False,
    uid_root: str = PYDICOM_ROOT_UID,
    comments: Sequence[str] = (),
) -> list[Dataset]:
    """Turn a prediction into the DICOM objects the node sends back.

    The SR always comes first and always goes out; the SEG (segmentation with a
    non-empty mask) and heatmap objects (classification with CAMs) follow. An object
    the sources cannot carry (e.g. a SEG for sources without a Frame of Reference)
    is left out, and the SR is marked partial and says why. UIDs derive from the
    source study and series, the model's name and version and the object kind, so
    a retried job produces the same UIDs and the archive replaces rather than
    duplicates, and results for two series of one study never share a UID.

    Parameters
    ----------
    prediction: inference.Prediction
        Classification, Segmentation or Detection from ``Model.predict``.
    source_datasets: Sequence[pydicom.Dataset]
        The instances the prediction was made on (with pixel data where heatmaps
        are to be fused over them).
    manufacturer: str | None
        Manufacturer of the node; ``None`` takes the model package's.
    device_name: str
        The node's name, written as the observing device.
    institution_name: str | None
        Institution to write into the equipment module.
    segmentation_kind: str | SegmentationKindValues
        ``"BINARY"`` (default) or ``"FRACTIONAL"`` SEG.
    parametric_map: bool
        Also write each heatmap as a Parametric Map.
    uid_root: str
        Root of the derived UIDs, ending in ``"."``.
    comments: Sequence[str]
        Text the SR carries among its qualitative evaluations (how the model came to
        run, e.g. as a later step of a chain); they leave the report complete.

    Returns
    -------
    list[pydicom.Dataset]
        The SR, then the SEG if any, then heatmap Secondary Captures and maps.

    Raises
    ------
    ValueError
        If an option is invalid, the sources are empty or span several studies, or
        the prediction's arrays do not match its frames.
    SourceMismatchError
        If the prediction names a frame that is not among the sources.
    TypeError
        If ``prediction`` is not a Classification, Segmentation or Detection.
    """
    options = ResultOptions(
        manufacturer=manufacturer,
        device_name=device_name,
        institution_name=institution_name,
        segmentation_kind=SegmentationKindValues(segmentation_kind),
        parametric_map=parametric_map,
        uid_root=uid_root,
    )
    sources = SourceSeries(source_datasets, prediction.series_instance_uid)
    with copied_names_accepted():
        return _build(prediction, sources, options, comments)


def _build(
    prediction: Prediction,
    sources: SourceSeries,
    options: ResultOptions,
    comments: Sequence[str] = (),
) -> list[Dataset]:
    omitted: list[UnsupportedSourceError] = []
    extra: list[Dataset] = []
    segmentation: SegmentationResult | None = None
    if isinstance(prediction, Segmentation):
        try:
            segmentation = build_segmentation(prediction, sources, options)
        except UnsupportedSourceError as error:
            logger.warning("model %s: %s", prediction.model.name, error)
            omitted.append(error)
        if segmentation is not None:
            extra.append(segmentation.dataset)
    elif isinstance(prediction, Classification):
        extra.extend(_heatmap_objects(prediction, sources, options, omitted))
    report = build_report(
        prediction, sources, options, segmentation=segmentation, omitted=omitted, comments=comments
    )
    logger.info(
        "model %s %s: built SR%s",
        prediction.model.name,
        prediction.model.version,
        "".join(f" + {ds.Modality}" for ds in extra),
    )
    return [report, *extra]


def _heatmap_objects(
    prediction: Classification,
    sources: SourceSeries,
    options: ResultOptions,
    omitted: list[UnsupportedSourceError],
) -> list[Dataset]:
    """Overlays for every heatmap; Parametric Maps too where asked and possible."""
    builders: list[Callable[[Heatmap, SourceSeries, ModelIdentity, ResultOptions, int], Dataset]]
    builders = [build_overlay]
    if options.parametric_map:
        builders.append(build_parametric_map)
    objects: list[Dataset] = []
    for build in builders:
        for number, heatmap in enumerate(prediction.heatmaps, start=1):
            try:
                objects.append(build(heatmap, sources, prediction.model, options, number))
            except UnsupportedSourceError as error:
                logger.warning("model %s: %s", prediction.model.name, error)
                omitted.append(error)
                break  # the same sources fail the same way for the other heatmaps
    return objects
