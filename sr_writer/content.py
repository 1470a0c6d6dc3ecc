"""Parts every result object shares: codes, the algorithm as observer, labelling.

The model is written as a device observer and as the algorithm (TID 4019), so that
a reader of any object can tell which model and version made it; series
descriptions say it is AI output and, where the model package says so, that it is
not for clinical use. Free text is kept to ASCII, which every Specific Character
Set a source may declare can encode.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import highdicom as hd
from highdicom.enum import SpecificCharacterSetValues
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    ObservationContext,
    ObserverContext,
    SourceImageForMeasurement,
)
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference import CodedConcept as ModelConcept
from inference import ModelIdentity
from sr_writer.options import ResultOptions

PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
SCORE = codes.SCT.Score
AREA = codes.SCT.Area
VOLUME = codes.SCT.Volume
SQUARE_MM = codes.UCUM.SquareMillimeter
CUBIC_MM = codes.UCUM.CubicMillimeter
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
PERCENT = codes.UCUM.Percent

_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
}
_LO_LENGTH = 64
_HIGHDICOM_CHARACTER_SETS = {term.value for term in SpecificCharacterSetValues}
_UNSTATED_DEIDENTIFICATION = "Identity removed upstream; method not stated by source"


@contextmanager
def copied_names_accepted() -> Iterator[None]:
    """Silence highdicom's warning about single-component person names.

    Names are copied from the source as the archive holds them (e.g. a
    de-identified "CQ500-CT-310"); warning about them on every job would only bury
    real problems in the log. ``warnings.catch_warnings`` swaps the process-wide
    filter list: a warning raised by another thread during a build may be
    filtered by this context too (Python 3.14's context-aware warnings lift this).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"The string .* is unlikely to represent the intended person"
        )
        yield


def character_set(source: Dataset) -> str | list[str] | None:
    """The Specific Character Set to hand highdicom: the source's, where it takes it.

    With code extensions, an empty first value means the default repertoire;
    highdicom wants it spelled out as "ISO 2022 IR 6", which the standard treats
    as the same thing. Terms highdicom does not know (e.g. Korean, ISO 2022 IR 149)
    give ``None`` here; `copy_source_context` then writes the source's value.
    """
    value = _normalized_character_set(source)
    terms = [value] if isinstance(value, str) else value or []
    return value if all(term in _HIGHDICOM_CHARACTER_SETS for term in terms) else None


def _normalized_character_set(source: Dataset) -> str | list[str] | None:
    value = source.get("SpecificCharacterSet")
    if isinstance(value, MultiValue | list):
        return [str(term) or "ISO 2022 IR 6" for term in value]
    return str(value) if value else None


def to_code(concept: ModelConcept) -> CodedConcept:
    """The model package's coded concept as an SR coded concept."""
    return CodedConcept(concept.value, concept.scheme_designator, concept.meaning)


def procedure_code(source: Dataset) -> CodedConcept:
    """The procedure reported: the modality's unspecified-region code where known."""
    code = _PROCEDURES.get(str(source.get("Modality", "")), codes.SCT.ImagingProcedure)
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


def manufacturer(model: ModelIdentity, options: ResultOptions) -> str:
    """The manufacturer written as creating equipment."""
    return options.manufacturer or model.manufacturer


def algorithm(model: ModelIdentity) -> AlgorithmIdentification:
    """The model as TID 4019 algorithm identification, named on each measurement group.

    Where the package's model card describes this version, an Algorithm Parameter
    (DCM 111002) names it, so that a reader can tell which card's validation and
    intended use apply to the result.
    """
    parameters = [ascii_text(f"model card: {model.model_card}")] if model.model_card else None
    return AlgorithmIdentification(name=model.name, version=model.version, parameters=parameters)


def algorithm_sequence(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """The model as the SEG's Segment Algorithm Identification."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name, family=codes.DCM.ArtificialIntelligence, version=model.version
    )


def observation_context(
    model: ModelIdentity, options: ResultOptions, device_uid: str
) -> ObservationContext:
    """The SR observer: the model running on this node, as a device.

    Parameters
    ----------
    model: ModelIdentity
        The model; its name and version name the device model.
    options: ResultOptions
        The node's name and manufacturer.
    device_uid: str
        Deterministic Device Observer UID.
    """
    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name=ascii_text(options.device_name),
        manufacturer_name=ascii_text(manufacturer(model, options)),
        model_name=ascii_text(f"{model.name} {model.version}"),
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def measurement(
    name: Code | CodedConcept,
    value: float,
    unit: Code | CodedConcept,
    source: SourceImageForMeasurement | None = None,
) -> Measurement:
    """A numeric measurement (TID 300).

    The algorithm is named once on its measurement group, not on every measurement:
    repeating it triples the items and the build time for nothing.
    """
    return Measurement(
        name=name,
        value=float(value),
        unit=unit,
        referenced_images=[source] if source is not None else None,
    )


def series_description(model: ModelIdentity, what: str) -> str:
    """``"AI <what> - <model> <version>[ - not for clinical use]"``, within 64 characters.

    The model part is shortened first, so that the kind of object and the warning
    always survive.
    """
    head = f"AI {what} - "
    tail = " - not for clinical use" if model.not_for_clinical_use else ""
    room = _LO_LENGTH - len(head) - len(tail)
    name = ascii_text(f"{model.name} {model.version}")
    if len(name) > room:
        name = name[: room - 3] + "..."
    return f"{head}{name}{tail}"


def ascii_text(text: str) -> str:
    """Text with non-ASCII characters replaced, encodable in any character set."""
    return text.encode("ascii", "replace").decode("ascii")


def copy_source_context(result: Dataset, source: Dataset) -> None:
    """Carry the source's character set and de-identification state into a result.

    The character set is the source's, so that its names survive (also where
    highdicom does not know it). A result about a de-identified patient is
    de-identified too, and the standard then requires the method: copied where the
    source states it, otherwise (absent or empty) written as not stated rather than
    left out or left empty.
    """
    value = _normalized_character_set(source)
    if value is not None:
        result.SpecificCharacterSet = value
    if str(source.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    result.PatientIdentityRemoved = "YES"
    stated = False
    for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in source and not source[keyword].is_empty:
            result[keyword] = source[keyword]
            stated = True
        elif keyword in result:
            del result[keyword]  # an empty value is no method (Type 1C)
    if not stated:
        result.DeidentificationMethod = _UNSTATED_DEIDENTIFICATION


def copy_laterality(result: Dataset, source: Dataset) -> None:
    """Write the series Laterality (Type 2C) as the source has it, empty if unknown.

    Validators cannot tell whether the imaged body part is paired, so they expect
    the attribute; an empty value means unknown, which is what the node knows.
    """
    if "Laterality" not in result:
        result.Laterality = source.get("Laterality", "")


_CONTENT_LABEL_LENGTH = 16


def content_label(model: ModelIdentity) -> str:
    """The Content Label of a SEG or a parametric map (CS: upper case, digits, space,
    underscore; 16 characters at most), from the model's name."""
    label = re.sub(r"[^A-Z0-9_ ]", "_", model.name.upper())[:_CONTENT_LABEL_LENGTH].strip()
    return label or "AI_SEGMENTATION"
