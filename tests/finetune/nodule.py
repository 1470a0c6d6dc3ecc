"""The nodule classifier the slow fine-tuning tests train: a generated chest set with its
training config, and ``dicom-node finetune --export`` on it, as a data scientist runs it."""

from __future__ import annotations

from pathlib import Path

import torch

from dicom_node.cli import main
from inference.finetune.synthetic import NODULE, write_chest_set


def nodule_config(
    name: str, version: str, intended_use: str, *, epochs: int, bootstrap: int, sections: str = ""
) -> str:
    """The training config (TOML) of a small nodule classifier on 32 x 32 radiographs,
    two folds; ``sections``: further tables, in TOML, before ``[training]``."""
    return f"""
[model]
name = "{name}"
version = "{version}"
task = "classification"
intended_use = "{intended_use}"

[input]
modalities = ["CR", "DX"]
size = [32, 32]
channels = 1
resize = "letterbox"
intensity = {{ method = "percentile" }}

[output]
activation = "sigmoid"

[[output.labels]]
name = "nodule"
finding = {{ value = "27925004", scheme = "SCT", meaning = "Nodule" }}
category = {{ value = "404684003", scheme = "SCT", meaning = "Clinical finding" }}
{sections}
[training]
backbone = "shufflenet_v2_x0_5"
epochs = {epochs}
batch_size = 8
folds = 2
bootstrap = {bootstrap}
"""


def write_nodule_set(folder: Path, studies: int, seed: int, config: str) -> Path:
    """A generated chest set under ``folder`` (``dicom/``, ``labels.csv``) with its
    training config (``train.toml``); ``folder``."""
    write_chest_set(folder, studies, (NODULE,), size=48, seed=seed)
    (folder / "train.toml").write_text(config, encoding="utf-8")
    return folder


def finetune_and_export(data: Path, run: Path, package: Path) -> int:
    """``dicom-node finetune --export`` on a set of `write_nodule_set`, on one thread;
    its exit status."""
    torch.set_num_threads(1)
    return main(
        [
            "finetune",
            "--config",
            str(data / "train.toml"),
            "--data",
            str(data / "dicom"),
            "--labels",
            str(data / "labels.csv"),
            "--out",
            str(run),
            "--export",
            str(package),
            "--no-progress",
            "--threads",
            "1",
        ]
    )
