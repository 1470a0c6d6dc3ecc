"""Studies for the viewer tests, sent through the running node, its results read back.

The archive (Orthanc) sends each study to ``dicom-node serve`` over C-STORE; the node
completes the study, runs the routed demo model and sends its results back to the
archive; the tests read them from there, as OHIF does. So what the viewer shows is
exactly what a hospital's archive receives. The studies:

* a CT series: ``CT_small.dcm`` (a real 128 x 128 slice through a vertebra) stacked
  into slices with consistent geometry, read by ``models/demo-ct-bone``: SR and SEG;
* a chest radiograph: pydicom-data's ``RG1_UNCR.dcm`` (a real PA chest CR with round
  opacities), read by ``models/demo-cr-classifier``: SR and heatmap Secondary Capture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset

from tests.orchestration.node import wait_until
from tests.orchestration.pacs import instance, series_by_modality
from tests.orchestration.studies import pydicom_file
from tests.peers import Orthanc

CHEST_RADIOGRAPH = "RG1_UNCR.dcm"
NODE_MODALITY = "node"
"""The node's name in Orthanc's DicomModalities."""
RESULT_TIMEOUT_S = 180.0
SETTLE_S = 10.0
"""Once the SR (always sent first) is back, how long nothing new may arrive before the
results count as complete even without every expected modality."""


@dataclass(frozen=True)
class ViewerStudy:
    """A study as the archive holds it after the node has sent its results back."""

    study_instance_uid: str
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


def chest_radiograph(folder: Path) -> Path:
    """RG1 as a CR modality would send it: without its zero Pixel Spacing.

    The file says PixelSpacing 0.000\\0.000, which no modality writes (Pixel Spacing
    must be positive) and which makes OHIF's cornerstone compute NaN coordinates: the
    image and everything drawn on it stay black. Without it, it is a CR without
    calibrated spacing, as many are.
    """
    radiograph = pydicom.dcmread(pydicom_file(CHEST_RADIOGRAPH))
    if not all(float(v) > 0 for v in radiograph.get("PixelSpacing", [1.0])):
        del radiograph.PixelSpacing
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHEST_RADIOGRAPH
    radiograph.save_as(path, enforce_file_format=True)
    return path


def through_the_node(
    pacs: Orthanc,
    files: Sequence[Path],
    expected: set[str],
    folder: Path,
    node_log: Callable[[], str],
) -> ViewerStudy:
    """Store ``files`` (one study) in the archive, send them to the node, and wait
    until results of every ``expected`` modality are back, or the SR is back and
    nothing else arrives for ``SETTLE_S`` (a model that found nothing sends no SEG or
    heatmap: the tests then fail on what is missing, not on a timeout); read them.

    Raises
    ------
    AssertionError
        When no SR is back within ``RESULT_TIMEOUT_S``; the message holds what did
        come back and the node's log.
    """
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, source_modality = str(header.StudyInstanceUID), str(header.Modality)
    pacs.store(NODE_MODALITY, pacs.upload(files))

    settled = _Settling(pacs, study_uid, expected)
    found = wait_until(
        settled.check,
        RESULT_TIMEOUT_S,
        lambda: (
            f"results {sorted(expected)} of study {study_uid} in the archive; there: "
            f"{sorted(series_by_modality(pacs, study_uid))}; node log:\n{node_log()[-6000:]}"
        ),
    )
    results = [
        instance(pacs, identifier, folder)[1]
        for modality, identifiers in sorted(found.items())
        if modality != source_modality
        for identifier in identifiers
    ]
    return ViewerStudy(study_uid, results)


class _Settling:
    """Polls the archive for a study's results; see `through_the_node`."""

    def __init__(self, pacs: Orthanc, study_uid: str, expected: set[str]) -> None:
        self.pacs, self.study_uid, self.expected = pacs, study_uid, expected
        self.last: dict[str, list[str]] = {}
        self.since = time.monotonic()

    def check(self) -> dict[str, list[str]]:
        found = series_by_modality(self.pacs, self.study_uid)
        if self.expected <= set(found):
            return found
        if found != self.last:
            self.last, self.since = found, time.monotonic()
        settled = "SR" in found and time.monotonic() - self.since >= SETTLE_S
        return found if settled else {}
