"""Build the shipped ``demo-cr-classifier`` through the fine-tuning path (transfer learning).

    python models/build_demo_classifier.py            # writes models/demo-cr-classifier

What a hospital's data scientist would do, with generated data standing in for real:

1. a backbone (ResNet-18, torchvision) is pretrained on generic generated
   images (`inference.finetune.transfer.pretrain_generic`), standing in for the
   ImageNet weights a hospital would download once, and saved as a state dict;
2. labelled radiographs are written as DICOM CR studies with a labels CSV (nodule,
   mass), drawn by ``models/build_demo_models.py``'s radiograph generator so that
   the package is the one its tests exercise;
3. ``finetune`` trains with frozen early layers, patient-level validation and a
   report (``--keep`` keeps it), and ``export_package`` writes the package with the
   validated thresholds, ONNX (with the CAM feature map) and a ``torch.export``
   program, both checked against PyTorch.

The package spec (input, labels, codes, runtime) is taken from
``build_demo_models.CR_TOML``, so both scripts describe one model. PyTorch is needed
to run this script, not to use the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
PACKAGE = "demo-cr-classifier"
logger = logging.getLogger("build_demo_classifier")


def _demo_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_demo_models", HERE / "build_demo_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def training_config(
    builder: ModuleType,
    weights: Path,
    scale: float,
    shape: tuple[int, int, str],
    backbone: str = "shufflenet_v2_x0_5",
    epochs: int | None = None,
) -> dict[str, Any]:
    """The demo's package sections from ``CR_TOML`` plus the ``[training]`` section."""
    raw: dict[str, Any] = tomllib.loads(builder.CR_TOML)
    raw["output"].pop("cam", None)  # export names the CAM head of the trained graph
    raw["output"].pop("name", None)
    for label in raw["output"]["labels"]:
        label.pop("threshold", None)  # chosen on validation
    raw["model"]["description"] = (
        f"{raw['model']['description']} Fine-tuned from a backbone pretrained on generic "
        "generated images (transfer learning)."
    )
    raw["training"] = {
        "backbone": backbone,
        # The stem and first stage only (ResNet-18 layer1: a 32 x 32 map at 128 x 128,
        # 43-pixel receptive field): a deep encoder's context spreads the CAM over the
        # whole lung around a finding, a shallow one keeps it on the finding.
        "encoder_depth": shape[0],
        "output_stride": shape[1],
        "pooling": shape[2],
        "weights": str(weights),
        "epochs": epochs or max(2, round(14 * scale)),
        "batch_size": 32,
        "lr": 3e-3,
        "encoder_lr_factor": 0.3,
        "freeze_stages": min(2, shape[0] - 1),
        "unfreeze_every": 2,
        "loss": "focal",
        "focal_gamma": 1.0,
        "folds": 1,  # one patient-level hold-out: the demo is built, not studied
        "val_fraction": 0.2,
        "patience": 5,
        "seed": 3,
        "augment": {"rotation_degrees": 5.0, "elastic_alpha": 0.01, "scale": 0.05},
    }
    return raw


def build(
    out: Path,
    work: Path,
    scale: float,
    weights: Path | None,
    threads: int,
    shape: tuple[int, int, str] = (2, 32, "avg"),
    backbone: str = "resnet18",
    epochs: int | None = None,
) -> Path:
    """Pretrain (unless given weights), generate, fine-tune and export; return the package."""
    import torch

    from inference.finetune.config import parse_config
    from inference.finetune.export import export_package
    from inference.finetune.run import finetune
    from inference.finetune.synthetic import write_cr_set
    from inference.finetune.transfer import pretrain_generic

    torch.set_num_threads(threads)
    builder = _demo_builder()
    if weights is None:
        weights = work / "generic_pretrained.pt"
        accuracy = pretrain_generic(
            backbone,
            weights,
            images=max(256, int(2000 * scale / 0.75)),
            size=64,
            epochs=max(1, round(4 * scale / 0.75)),
            lr=2e-3,
        )
        logger.info("generic pretraining: held-out accuracy %.3f", accuracy)
    labels: Sequence[str] = builder.CR_LABELS
    sizes = np.random.default_rng(31)

    def draw(rng: np.random.Generator, present: Sequence[str]) -> npt.NDArray[np.generic]:
        rows, cols = int(sizes.integers(160, 321)), int(sizes.integers(140, 321))
        image, _ = builder.radiograph(rng, rows, cols, "nodule" in present, "mass" in present)
        return np.asarray(image)

    data = work / "data"
    write_cr_set(data, max(40, int(1200 * scale)), labels, [0.45] * len(labels), draw, seed=30)
    config = parse_config(
        training_config(builder, weights, scale, shape, backbone, epochs), work / "train.toml"
    )
    finetune(config, data / "dicom", work / "run", data / "labels.csv", device="cpu")
    package = out / PACKAGE
    export_package(work / "run", package, overwrite=True, torch_program=True)
    return package


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and build the package."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the package into")
    parser.add_argument("--scale", type=float, default=0.75, help="fraction of data and epochs")
    parser.add_argument("--weights", type=Path, help="a pretrained state dict (skip pretraining)")
    parser.add_argument("--keep", type=Path, help="keep data, run and report in this folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=30, help="0: 14 x scale")
    parser.add_argument("--depth", type=int, default=2, help="encoder stages kept")
    parser.add_argument("--output-stride", type=int, default=32, choices=[8, 16, 32])
    parser.add_argument("--pooling", default="avg", choices=["avg", "max", "lse"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.keep or Path(tempfile.mkdtemp(prefix="demo-classifier-"))
    try:
        package = build(
            args.out,
            work,
            args.scale,
            args.weights,
            args.threads,
            (args.depth, args.output_stride, args.pooling),
            args.backbone,
            args.epochs,
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {package}")


if __name__ == "__main__":
    main()
