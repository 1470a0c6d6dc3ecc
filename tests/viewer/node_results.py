"""Studies for the viewer tests, and the node's results for them, made as the node makes them.

Two studies from pydicom's test data:

* a CT series: ``CT_small.dcm`` (a real 128 x 128 slice through a vertebra) stacked into
  slices along its normal with consistent geometry (tests/sr_writer/samples.py), read by
  the demo bone segmentation model (``models/demo-ct-bone``): SR and SEG;
* a chest radiograph: ``RG1_UNCR.dcm`` (CR, PA chest), read by the demo radiograph
  classifier (``models/demo-cr-classifier``): SR and heatmap Secondary Capture.

The results come from the same calls the node's worker makes (`inference.load_model`,
``Model.predict``, `sr_writer.build_results`), so what the viewer shows is what a
hospital's archive would receive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file

import inference
import sr_writer
from tests.conftest import REPO_ROOT
from tests.sr_writer.samples import single_frame_series

CT_MODEL = REPO_ROOT / "models" / "demo-ct-bone"
CR_MODEL = REPO_ROOT / "models" / "demo-cr-classifier"
CT_SOURCE = "CT_small.dcm"
CT_SLICES = 8
CR_SOURCE = "RG1_UNCR.dcm"
NODE_AE_TITLE = "AINODE"


@dataclass(frozen=True)
class ViewerStudy:
    """A study as the archive holds it after the node has sent its results back."""

    study_instance_uid: str
    sources: list[Dataset] = field(repr=False)
    results: list[Dataset] = field(repr=False)

    def result(self, modality: str) -> Dataset:
        """The result object of a modality (SR, SEG, OT).

        Raises
        ------
        LookupError
            When the node produced none, naming what it did produce.
        """
        for dataset in self.results:
            if dataset.Modality == modality:
                return dataset
        produced = ", ".join(str(ds.Modality) for ds in self.results)
        raise LookupError(f"no {modality} among the node's results ({produced})")

    def has(self, modality: str) -> bool:
        """Whether the node produced a result object of this modality."""
        return any(dataset.Modality == modality for dataset in self.results)

    def write(self, folder: Path) -> list[Path]:
        """Write sources and results as Part 10 files; their paths, sources first."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for dataset in [*self.sources, *self.results]:
            path = folder / f"{dataset.Modality}-{dataset.SOPInstanceUID}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths


def ct_study() -> ViewerStudy:
    """The CT series and what the bone segmentation model makes of it."""
    series = single_frame_series(CT_SOURCE, CT_SLICES)
    return ViewerStudy(str(series[0].StudyInstanceUID), series, node_results(CT_MODEL, series))


def cr_study() -> ViewerStudy:
    """The chest radiograph and what the classifier makes of it."""
    radiograph = _radiograph()
    return ViewerStudy(
        str(radiograph.StudyInstanceUID), [radiograph], node_results(CR_MODEL, [radiograph])
    )


def node_results(model_path: Path, series: Sequence[Dataset]) -> list[Dataset]:
    """Run one model on one series and build the result objects, as the worker does."""
    with inference.load_model(model_path) as model:
        prediction = model.predict(list(series))
    return sr_writer.build_results(prediction, series, device_name=NODE_AE_TITLE)


def _radiograph() -> Dataset:
    """RG1 as a CR modality sends it: without its zero Pixel Spacing.

    The file carries PixelSpacing 0.000\\0.000, which no modality writes (Pixel Spacing
    must be positive) and which makes cornerstone compute NaN coordinates: the image
    and anything drawn on it stay black. Removing the bogus value leaves the image as
    a CR without calibrated spacing.
    """
    path = get_testdata_file(CR_SOURCE)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {CR_SOURCE} is not installed (pydicom-data)")
    radiograph = pydicom.dcmread(path)
    if "PixelSpacing" in radiograph and not all(float(v) > 0 for v in radiograph.PixelSpacing):
        del radiograph.PixelSpacing
    return radiograph
