"""Shared fixtures for result-object tests: real sources, predictions, dciodvfy.

`dciodvfy` writes an object to disk and runs Debian's dicom3tools validator on it,
failing the test on any line starting with ``Error``; the warnings it returns can be
asserted on. pydicom's strict writing validation is on for every test, as in
highdicom's own suite.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes

from inference import Label, ModelIdentity
from tests.sr_writer.samples import concept

DCIODVFY = Path("/usr/bin/dciodvfy")

Validator = Callable[[Dataset, str], list[str]]


@pytest.fixture(autouse=True)
def strict_writing() -> Iterator[None]:
    """Raise on invalid values as pydicom writes them (highdicom's test habit)."""
    settings = pydicom.config.settings
    before = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.writing_validation_mode = before


@pytest.fixture
def dciodvfy(tmp_path: Path) -> Validator:
    """Write a dataset and validate it with ``dciodvfy -new``; return its warnings."""
    if not DCIODVFY.exists():
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")

    def validate(dataset: Dataset, name: str) -> list[str]:
        path = tmp_path / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        result = subprocess.run(
            [str(DCIODVFY), "-new", str(path)],
            capture_output=True,
            text=True,
            errors="replace",  # dciodvfy echoes values in the file's own encoding
            timeout=60,
            check=False,
        )
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"dciodvfy errors in {name}:\n" + "\n".join(errors)
        return [line for line in lines if line.startswith("Warning")]

    return validate


@pytest.fixture
def model() -> ModelIdentity:
    return ModelIdentity(name="demo-ct-lesion", version="1.2.0", description="Demo lesion model")


@pytest.fixture
def lesion() -> Label:
    return Label(
        name="lesion",
        finding=concept(codes.SCT.Lesion),
        category=concept(codes.SCT.MorphologicallyAbnormalStructure),
        threshold=0.4,
    )


@pytest.fixture
def organ() -> Label:
    return Label(
        name="liver",
        finding=concept(codes.SCT.Liver),
        category=concept(codes.SCT.Organ),
    )
