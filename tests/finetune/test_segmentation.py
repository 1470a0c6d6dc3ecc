"""Segmentation: SEG objects as masks, U-Net with a ResNet encoder, dice + cross-entropy,
Dice and Hausdorff in the report, and an exported package the node runs like PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from inference import Segmentation, load_model
from inference.finetune.config import read_config
from inference.finetune.data import load_training_data
from inference.finetune.export import export_package, load_fold_model
from inference.finetune.run import finetune
from inference.finetune.synthetic import write_segmentation_set
from inference.model_card import read_card

pytestmark = pytest.mark.slow

CONFIG = """
[model]
name = "test-ct-lesion"
version = "0.1.0"
task = "segmentation"
intended_use = "Tests: segments a dense round lesion on generated CT."

[input]
modalities = ["CT"]
size = [64, 64]
intensity = { method = "window", center = 40.0, width = 400.0 }

[[output.labels]]
name = "lesion"
finding = { value = "108369006", scheme = "SCT", meaning = "Neoplasm" }
category = { value = "49755003", scheme = "SCT", meaning = "Morphologically abnormal structure" }

[training]
backbone = "unet_resnet18"
loss = "dice_ce"
epochs = 2
batch_size = 8
folds = 2
freeze_stages = 1
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("ct")
    write_segmentation_set(folder, 4, slices=5, size=64, seed=2)
    (folder / "train.toml").write_text(CONFIG, encoding="utf-8")
    torch.set_num_threads(1)
    config = read_config(folder / "train.toml")
    finetune(config, folder / "dicom", folder / "run", progress=False)
    export_package(folder / "run", folder / "package")
    return folder, folder / "run", folder / "package"


def test_masks_come_from_seg_through_the_node_preprocessing(
    trained: tuple[Path, Path, Path],
) -> None:
    folder, _, _ = trained
    config = read_config(folder / "train.toml")
    data = load_training_data(folder / "dicom", config.spec, (18, 40, 65))
    assert data.images.shape == (20, 1, 64, 64) and data.targets.shape == (20, 64, 64)
    assert set(np.unique(data.targets).tolist()) == {0, 1}
    # The lesion is HU 180 in soft tissue at 40 HU: brighter where the mask says lesion.
    lesion = data.images[:, 0][data.targets == 1].mean()
    tissue = data.images[:, 0][(data.targets == 0) & (data.images[:, 0] > 0.3)].mean()
    assert lesion > tissue + 0.2
    np.testing.assert_allclose(data.spacing, 1.0)  # 1 mm pixels, 64 -> 64


def test_report_has_dice_and_hausdorff(trained: tuple[Path, Path, Path]) -> None:
    _, run, package = trained
    results = json.loads((run / "report" / "results.json").read_text(encoding="utf-8"))
    pooled = results["labels"][0]["pooled"]
    assert pooled["n"] == 20 and len(pooled["dice"]) == 20
    assert 0.0 <= pooled["dice_mean"] <= 1.0
    assert pooled["hausdorff_unit"] == "mm"
    assert {g["attribute"] for g in pooled["subgroups"]} == {"sex", "age_band", "manufacturer"}
    assert [g["group"] for g in pooled["subgroups"] if g["attribute"] == "manufacturer"] == [
        "Synthetic"
    ]
    card = read_card(package)  # export wrote the card: Dice of the segmentation run
    assert card is not None and card.training_data is not None
    assert card.training_data.cases == 4 and card.training_data.unit == "series"
    assert card.internal_validation is not None
    assert card.internal_validation.labels[0]["dice_mean"] == pooled["dice_mean"]
    figures = json.loads((run / "report" / "figures.json").read_text(encoding="utf-8"))
    assert list(figures) == ["dice_lesion"]


def test_node_segmentation_equals_pytorch(trained: tuple[Path, Path, Path]) -> None:
    folder, run, package = trained
    config = read_config(folder / "train.toml")
    fold = json.loads((run / "summary.json").read_text(encoding="utf-8"))["selected_fold"]
    network = load_fold_model(run, fold, config)
    series = sorted((folder / "dicom").glob("SEG00200000_0*.dcm"))
    datasets = [pydicom.dcmread(p) for p in series]
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(datasets, keep_probabilities=True)
    assert isinstance(prediction, Segmentation)
    assert prediction.masks.shape == (5, 64, 64, 1)
    data = load_training_data(folder / "dicom", config.spec, (18, 40, 65))
    case = next(i for i, c in enumerate(data.cases) if c.key == datasets[0].SeriesInstanceUID)
    with torch.no_grad():
        logits = network(torch.from_numpy(data.images[data.case_of == case]))
    ours = torch.softmax(logits, dim=1)[:, 1].numpy()
    assert prediction.probabilities is not None
    np.testing.assert_allclose(prediction.probabilities[..., 0], ours, atol=1e-4)
