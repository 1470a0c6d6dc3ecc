"""The demo classifier's build script runs the whole fine-tuning path (tiny scale)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from inference import validate_package
from inference.finetune.transfer import pretrain_generic
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_build_script_fine_tunes_and_exports_the_demo_package(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    weights = tmp_path / "generic.pt"
    pretrain_generic(
        "resnet18", weights, images=64, size=32, epochs=1, batch_size=32, progress=False
    )
    spec = importlib.util.spec_from_file_location(
        "build_demo_classifier", REPO_ROOT / "models" / "build_demo_classifier.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.main(
        [
            "--out",
            str(tmp_path),
            "--scale",
            "0.02",
            "--epochs",
            "2",
            "--threads",
            "1",
            "--weights",
            str(weights),
        ]
    )
    package = validate_package(tmp_path / "demo-cr-classifier")
    assert [label.name for label in package.spec.labels] == ["nodule", "mass"]
    assert package.spec.output.cam is not None and package.torch_path is not None
    assert package.spec.input.size == (128, 128)
    assert "Fine-tuned from a backbone pretrained" in package.spec.model.description
