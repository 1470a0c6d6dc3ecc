"""The SR image library (TID 1600), built lean so that big series stay fast.

highdicom's ``ImageLibrary`` writes a dozen descriptor items per image and its SR
constructor then copies and re-parses every item: for a 300-slice series that is
about 20 s. The descriptors (TID 1602) are optional (type U) for groups and
entries alike; this library lists every source image, one group per SOP class and
Frame of Reference, without them, and is added to the document after highdicom
has built it.
"""

from __future__ import annotations

from collections import defaultdict

from highdicom.sr import CodedConcept, RelationshipTypeValues
from pydicom import Dataset
from pydicom.sequence import Sequence as DataElementSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from sr_writer.sources import SourceSeries

_SOURCE = CodedConcept("260753009", "SCT", "Source")
_IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements.value


def image_library(sources: SourceSeries) -> Dataset:
    """The Image Library container listing every source image, grouped by series.

    Parameters
    ----------
    sources: SourceSeries
        The source instances.

    Returns
    -------
    pydicom.Dataset
        A CONTAINS CONTAINER content item (DCM 111028 "Image Library").
    """
    groups: dict[tuple[str, str], list[Dataset]] = defaultdict(list)
    for dataset in sources.datasets:
        key = (str(dataset.SOPClassUID), str(dataset.get("FrameOfReferenceUID", "")))
        groups[key].append(dataset)
    return _container(codes.DCM.ImageLibrary, [_group(members) for members in groups.values()])


def insert_library(document: Dataset, library: Dataset) -> None:
    """Put the library where TID 1500 has it: before the Imaging Measurements.

    Raises
    ------
    ValueError
        If the document has no Imaging Measurements container.
    """
    items = list(document.ContentSequence)
    for index, item in enumerate(items):
        if item.ConceptNameCodeSequence[0].CodeValue == _IMAGING_MEASUREMENTS:
            # A plain sequence: highdicom's refuses items it did not build.
            document.ContentSequence = DataElementSequence(
                [*items[:index], library, *items[index:]]
            )
            return
    raise ValueError(f"SR {document.SOPInstanceUID} has no Imaging Measurements container")


def _group(members: list[Dataset]) -> Dataset:
    return _container(codes.DCM.ImageLibraryGroup, [_entry(member) for member in members])


def _container(name: Code, items: list[Dataset]) -> Dataset:
    """A CONTAINS CONTAINER item, plain: highdicom's re-validates every child."""
    container = Dataset()
    container.RelationshipType = RelationshipTypeValues.CONTAINS.value
    container.ValueType = "CONTAINER"
    container.ConceptNameCodeSequence = [_concept(name)]
    container.ContinuityOfContent = "SEPARATE"
    container.ContentSequence = DataElementSequence(items)
    return container


def _concept(code: Code | CodedConcept) -> Dataset:
    concept = Dataset()
    concept.CodeValue = code.value
    concept.CodingSchemeDesignator = code.scheme_designator
    concept.CodeMeaning = code.meaning
    return concept


def _entry(dataset: Dataset) -> Dataset:
    """One IMAGE item: built as a plain dataset, ~50x cheaper than highdicom's."""
    reference = Dataset()
    reference.ReferencedSOPClassUID = dataset.SOPClassUID
    reference.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    item = Dataset()
    item.RelationshipType = RelationshipTypeValues.CONTAINS.value
    item.ValueType = "IMAGE"
    item.ConceptNameCodeSequence = [_concept(_SOURCE)]
    item.ReferencedSOPSequence = [reference]
    return item
