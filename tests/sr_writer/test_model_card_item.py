"""The SR names the package version whose model card applies (TID 4019 parameter)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from pydicom import Dataset
from pydicom.sr.codedict import codes

from inference import Classification, Label, LabelScore, ModelIdentity
from sr_writer import build_results
from tests.sr_writer.conftest import Validator
from tests.sr_writer.samples import concept, frame_refs, load

ALGORITHM_PARAMETER = "111002"


def _items(content: Dataset) -> Iterator[Dataset]:
    for item in content.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _parameters(sr: Dataset) -> list[str]:
    return [
        str(item.TextValue)
        for item in _items(sr)
        if item.get("ConceptNameCodeSequence")
        and item.ConceptNameCodeSequence[0].CodeValue == ALGORITHM_PARAMETER
    ]


def _report(model: ModelIdentity) -> Dataset:
    source = load("CT_small.dcm")
    finding = Label(
        name="nodule",
        finding=concept(codes.SCT.Nodule),
        category=concept(codes.SCT.MorphologicallyAbnormalStructure),
    )
    prediction = Classification(
        model=model,
        series_instance_uid=str(source.SeriesInstanceUID),
        frames=frame_refs([source]),
        scores=(LabelScore(label=finding, probability=0.2, positive=False),),
    )
    (sr,) = build_results(prediction, [source])
    return sr


def test_each_finding_names_the_card_and_the_sr_validates(
    model: ModelIdentity, dciodvfy: Validator
) -> None:
    sr = _report(replace(model, model_card="demo-ct-lesion 1.2.0"))
    dciodvfy(sr, "sr")
    assert _parameters(sr) == ["model card: demo-ct-lesion 1.2.0"]  # one finding, one group


def test_without_a_card_no_parameter_is_written(model: ModelIdentity) -> None:
    assert _parameters(_report(model)) == []
