"""Coded concepts for imported labels: from a mapping file, or generic ones that say so.

A bundle or nnU-Net dataset names its labels ("spleen", "liver") but carries no
codes, while a SEG segment and an SR finding need a coded concept. A mapping file
gives each label its SNOMED CT finding and category::

    [[labels]]
    name = "spleen"                    # the label's name in the bundle or dataset
    finding = { value = "78961009", scheme = "SCT", meaning = "Spleen" }
    category = { value = "123037004", scheme = "SCT", meaning = "Anatomical Structure" }

A label without an entry gets a generic concept: a private code (scheme
``99DCMNODE``) whose meaning is the label's name, in the category "Tissue" (SCT
85756007, what 3D Slicer gives a segment it knows nothing about). The importer lists
those labels, so that nobody mistakes them for coded findings.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.importers.errors import ImportModelError
from inference.spec import CodeSpec

GENERIC_SCHEME = "99DCMNODE"
GENERIC_CATEGORY = CodeSpec(value="85756007", scheme="SCT", meaning="Tissue")
_CODE_VALUE_LENGTH = 16  # a DICOM Code Value (SH); longer names fall back to the channel


class _LabelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    finding: CodeSpec
    category: CodeSpec


class _LabelFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: Annotated[tuple[_LabelEntry, ...], Field(min_length=1)]


@dataclass(frozen=True)
class CodedLabels:
    """The ``[[output.labels]]`` tables to write, and which labels got generic codes."""

    tables: tuple[dict[str, Any], ...]
    generic: tuple[str, ...]


def read_label_map(path: Path) -> dict[str, tuple[CodeSpec, CodeSpec]]:
    """Read a label mapping file: label name to (finding, category).

    Parameters
    ----------
    path : pathlib.Path
        A TOML file with one ``[[labels]]`` table per label.

    Returns
    -------
    dict
        Finding and category per label name.

    Raises
    ------
    ImportModelError
        When the file is missing, is not TOML, has an unknown or missing key, or
        names a label twice; the error names the file and the key.
    """
    if not path.is_file():
        raise ImportModelError(path, "-", "labels file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        parsed = _LabelFile.model_validate(raw)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ImportModelError(path, "-", f"not valid TOML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "-"
        raise ImportModelError(path, key, first["msg"]) from exc
    mapping: dict[str, tuple[CodeSpec, CodeSpec]] = {}
    for index, entry in enumerate(parsed.labels):
        if entry.name in mapping:
            raise ImportModelError(path, f"labels.{index}.name", f"{entry.name!r} given twice")
        mapping[entry.name] = (entry.finding, entry.category)
    return mapping


def _generic_finding(name: str, channel: int, taken: set[str]) -> CodeSpec:
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:_CODE_VALUE_LENGTH]
    if not value or value in taken:
        value = f"LABEL{channel}"
    taken.add(value)
    return CodeSpec(value=value, scheme=GENERIC_SCHEME, meaning=name[:64])


def coded_labels(
    names: Sequence[str],
    first_channel: int,
    labels_file: Path | None,
    threshold: float | None = None,
) -> CodedLabels:
    """Give each output label a coded concept.

    Parameters
    ----------
    names : sequence of str
        The labels in output-channel order (background excluded).
    first_channel : int
        The output channel of the first label (1 for softmax, 0 for sigmoid); used
        for generic codes of names that are no valid code value.
    labels_file : pathlib.Path, optional
        A mapping file (`read_label_map`); ``None``: every label gets a generic
        concept.
    threshold : float, optional
        The decision threshold of a sigmoid model, written per label.

    Returns
    -------
    CodedLabels

    Raises
    ------
    ImportModelError
        When the mapping file is broken, or names a label the model does not have
        (a typo would otherwise leave the real label generic without anyone noticing).
    """
    mapping = read_label_map(labels_file) if labels_file is not None else None
    if mapping is not None and labels_file is not None:
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise ImportModelError(
                labels_file, "labels.name", f"{unknown} not among the model's labels {list(names)}"
            )
    tables: list[dict[str, Any]] = []
    generic: list[str] = []
    taken: set[str] = set()
    for offset, name in enumerate(names):
        if mapping is not None and name in mapping:
            finding, category = mapping[name]
        else:
            finding = _generic_finding(name, first_channel + offset, taken)
            category = GENERIC_CATEGORY
            generic.append(name)
        table: dict[str, Any] = {
            "name": name,
            "finding": finding.model_dump(),
            "category": category.model_dump(),
        }
        if threshold is not None:
            table["threshold"] = threshold
        tables.append(table)
    return CodedLabels(tuple(tables), tuple(generic))
