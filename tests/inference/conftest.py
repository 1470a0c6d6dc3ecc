"""Fixtures for the inference tests: the shipped demo packages and test graphs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import Model, load_model
from tests.conftest import REPO_ROOT

DEMO_CT = REPO_ROOT / "models" / "demo-ct-bone"
DEMO_CR = REPO_ROOT / "models" / "demo-cr-classifier"
DEMO_3D = REPO_ROOT / "models" / "demo-ct-body3d"


@pytest.fixture(scope="session")
def ct_model() -> Iterator[Model]:
    """The shipped CT bone model on ONNX Runtime (CPU)."""
    with load_model(DEMO_CT, backend="onnxruntime", device="cpu") as model:
        yield model


@pytest.fixture(scope="session")
def cr_model() -> Iterator[Model]:
    """The shipped radiograph classifier on ONNX Runtime (CPU)."""
    with load_model(DEMO_CR, backend="onnxruntime", device="cpu") as model:
        yield model


@pytest.fixture
def package_dir(tmp_path: Path) -> Path:
    """An empty folder for a test package."""
    return tmp_path / "package"
