"""Transfer learning mechanics: a backbone pretrained on generic images is loaded, its
early stages stay frozen while the new head and late stages learn, and the report
says where the weights came from. The measured benefit over training from scratch is
the benchmark ``python -m inference.finetune.transfer``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from inference.finetune.config import read_config
from inference.finetune.networks import build_network, encoder_stages
from inference.finetune.run import finetune
from inference.finetune.synthetic import NODULE, write_chest_set
from inference.finetune.transfer import pretrain_generic

pytestmark = pytest.mark.slow

CONFIG = """
[model]
name = "test-transfer"
version = "1.0.0"
task = "classification"
intended_use = "Tests."

[input]
modalities = ["CR"]
size = [32, 32]
intensity = { method = "minmax" }

[[output.labels]]
name = "nodule"
finding = { value = "27925004", scheme = "SCT", meaning = "Nodule" }
category = { value = "404684003", scheme = "SCT", meaning = "Clinical finding" }

[training]
backbone = "shufflenet_v2_x0_5"
weights = "generic.pt"
epochs = 2
batch_size = 8
folds = 2
freeze_stages = 3
unfreeze_every = 0
bootstrap = 20
"""


def test_pretrained_backbone_is_loaded_and_early_stages_stay_frozen(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    weights = tmp_path / "generic.pt"
    accuracy = pretrain_generic(
        "shufflenet_v2_x0_5", weights, images=128, size=32, epochs=1, batch_size=32, progress=False
    )
    assert 0.0 <= accuracy <= 1.0
    state = torch.load(weights, weights_only=True)
    assert tuple(state["fc.weight"].shape) == (4, 1024)  # torchvision layout, generic head

    write_chest_set(tmp_path / "data", 8, (NODULE,), size=48, seed=9)
    (tmp_path / "train.toml").write_text(CONFIG, encoding="utf-8")
    config = read_config(tmp_path / "train.toml")
    torch.set_num_threads(1)
    finetune(
        config,
        tmp_path / "data" / "dicom",
        tmp_path / "run",
        tmp_path / "data" / "labels.csv",
        progress=False,
        echo=lambda _: None,
    )

    pretrained = build_network("shufflenet_v2_x0_5", 1, 1, weights)
    tuned = build_network("shufflenet_v2_x0_5", 1, 1)
    best = torch.load(tmp_path / "run" / "fold-1" / "best.pt", weights_only=True)
    tuned.load_state_dict(best["model"])
    before, after = encoder_stages(pretrained), encoder_stages(tuned)
    for index in range(3):  # frozen: weights and batch-norm statistics untouched
        for (name, a), b in zip(
            before[index].state_dict().items(), after[index].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), f"stage {index} {name} changed while frozen"
    changed = [
        not torch.equal(a, b)
        for a, b in zip(
            before[4].state_dict().values(), after[4].state_dict().values(), strict=True
        )
    ]
    assert any(changed)  # the late stages learnt
    report = (tmp_path / "run" / "report" / "report.md").read_text(encoding="utf-8")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (
        f"initialisation: pretrained weights from the file generic.pt (sha256 {digest}; "
        "provenance as declared by the user)" in report
    )
    assert str(tmp_path) not in report  # the file's name, not where it lies
