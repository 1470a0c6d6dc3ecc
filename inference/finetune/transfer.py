"""The transfer-learning demonstration: pretrained on generic images, fine-tuned on a
small medical-like set with frozen early layers, against the same network trained
from scratch on that set.

    python -m inference.finetune.transfer --out /tmp/transfer

prints both pooled out-of-fold AUCs (with their bootstrap intervals) and both
exported packages' AUCs on an independent generated test set, scored through
`inference.load_model` exactly as the node scores a series. `pretrain_generic` is
also how the shipped demo classifier's backbone is made (see
``models/build_demo_classifier.py``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import torch
import torchvision
from torch.nn import functional
from tqdm import tqdm

from inference.finetune.config import parse_config
from inference.finetune.export import export_package
from inference.finetune.metrics import auc, bootstrap_auc_ci
from inference.finetune.networks import Backbone
from inference.finetune.report import fmt, interval_text
from inference.finetune.run import RunSummary, finetune
from inference.finetune.synthetic import (
    GENERIC_CLASSES,
    OPACITY,
    Finding,
    generic_images,
    write_chest_set,
)
from inference.model import load_model

logger = logging.getLogger(__name__)


def pretrain_generic(
    backbone: Backbone | str,
    weights_out: Path,
    *,
    images: int = 4000,
    size: int = 64,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 4e-3,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Train a torchvision backbone on generated generic images and save its state dict.

    The file has torchvision's own layout (with a 4-class head), like a state dict
    downloaded for ImageNet; ``--weights`` takes it.

    Parameters
    ----------
    backbone : Backbone or str
        A classification backbone.
    weights_out : pathlib.Path
        Where the state dict is written.
    images, size, epochs, batch_size, seed : int
        The generic dataset and its training.
    lr : float
        Peak learning rate of the one-cycle schedule.
    progress : bool
        Show a progress bar.

    Returns
    -------
    float
        Accuracy on held-out generic images.

    Raises
    ------
    ValueError
        When the backbone is a segmentation network.
    """
    kind = Backbone(backbone)
    if kind.segmentation:
        raise ValueError(f"pretrain a classification backbone, not {kind.value}")
    torch.manual_seed(seed)
    model = getattr(torchvision.models, kind.value)(weights=None, num_classes=len(GENERIC_CLASSES))
    x, y = generic_images(images, size, seed)
    x_test, y_test = generic_images(max(200, images // 10), size, seed + 1)
    data_x, data_y = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=f"pretrain {kind.value}", disable=not progress)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = functional.cross_entropy(model(data_x[index]), data_y[index])
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [
                model(torch.from_numpy(x_test[i : i + 256])).argmax(1)
                for i in range(0, len(x_test), 256)
            ]
        )
    accuracy = float((predicted.numpy() == y_test).mean())
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights_out)
    logger.info("pretrained %s on %d generic images: accuracy %.3f", kind.value, images, accuracy)
    return accuracy


def chest_config(
    name: str,
    findings: Sequence[Finding],
    size: int,
    training: dict[str, Any],
    base_dir: Path,
) -> dict[str, Any]:
    """A training config (as parsed TOML) for a CR classifier of the given findings."""
    labels = [
        {
            "name": f.name,
            "finding": {
                "value": "49755003",
                "scheme": "SCT",
                "meaning": "Morphologically abnormal structure",
            },
            "category": {"value": "404684003", "scheme": "SCT", "meaning": "Clinical finding"},
        }
        for f in findings
    ]
    return {
        "model": {
            "name": name,
            "version": "1.0.0",
            "task": "classification",
            "intended_use": "Demonstration on generated radiographs; not for clinical use.",
        },
        "input": {
            "modalities": ["CR", "DX"],
            "size": [size, size],
            "channels": 1,
            "intensity": {"method": "percentile"},
        },
        "output": {"activation": "sigmoid", "labels": labels},
        "training": training,
    }


@dataclass(frozen=True)
class ArmResult:
    """One arm of the comparison: out-of-fold and independent-test AUC."""

    name: str
    summary: RunSummary
    test_auc: float
    test_ci: tuple[float, float]

    def line(self) -> str:
        """The arm's figures on one line."""
        pooled = self.summary.results["labels"][0]["pooled"]
        return (
            f"{self.name:<10} out-of-fold AUC {fmt(pooled['auc'])} "
            f"({interval_text(pooled['auc_ci95'], pooled['auc_ci_note'])}); "
            f"independent test AUC {self.test_auc:.3f} "
            f"(95% CI {self.test_ci[0]:.3f}-{self.test_ci[1]:.3f})"
        )


def score_package(package: Path, folder: Path, label: str) -> tuple[float, tuple[float, float]]:
    """AUC of a package on a generated test folder, predicted with `load_model`."""
    truth, scores = [], []
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        rows = (folder / "labels.csv").read_text(encoding="utf-8").splitlines()
        header = rows[0].split(",")
        column = header.index(label)
        positive = {r.split(",")[0]: r.split(",")[column] == "1" for r in rows[1:]}
        for path in sorted((folder / "dicom").glob("*.dcm")):
            ds = pydicom.dcmread(path)
            prediction = model.predict([ds])
            score = next(s for s in prediction.scores if s.label.name == label)  # type: ignore[union-attr]
            truth.append(positive[str(ds.StudyInstanceUID)])
            scores.append(score.probability)
    return auc(truth, scores), bootstrap_auc_ci(truth, scores, seed=0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print both AUCs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--backbone", default=Backbone.SHUFFLENET_V2_X0_5.value)
    parser.add_argument("--patients", type=int, default=60, help="the small labelled set")
    parser.add_argument("--test-patients", type=int, default=300)
    parser.add_argument("--generic-images", type=int, default=6000)
    parser.add_argument("--pretrain-epochs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--unfreeze-every", type=int, default=10)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    weights = args.out / "generic_pretrained.pt"
    if not weights.is_file():
        accuracy = pretrain_generic(
            args.backbone,
            weights,
            images=args.generic_images,
            size=args.size,
            epochs=args.pretrain_epochs,
            seed=args.seed,
        )
        print(
            f"pretrained {args.backbone} on {args.generic_images} generic images: "
            f"held-out accuracy {accuracy:.3f}"
        )
    small, test = args.out / "small_set", args.out / "test_set"
    write_chest_set(small, args.patients, (OPACITY,), size=128, seed=args.seed + 100)
    write_chest_set(test, args.test_patients, (OPACITY,), size=128, seed=args.seed + 200)
    common = {
        "backbone": args.backbone,
        "epochs": args.epochs,
        "folds": args.folds,
        "seed": args.seed,
        "batch_size": 16,
        "patience": args.epochs,
        "bootstrap": 1000,
    }
    arms = {
        "transfer": {
            **common,
            "weights": str(weights.resolve()),
            "freeze_stages": 3,
            "unfreeze_every": args.unfreeze_every,
            "lr": 3e-3,
            "encoder_lr_factor": 0.1,
        },
        "scratch": {**common, "freeze_stages": 0, "lr": 3e-3, "encoder_lr_factor": 1.0},
    }
    results = []
    for name, training in arms.items():
        raw = chest_config(f"transfer-demo-{name}", (OPACITY,), args.size, training, args.out)
        config = parse_config(raw, args.out / f"{name}.toml")
        summary = finetune(
            config,
            small / "dicom",
            args.out / f"run-{name}",
            small / "labels.csv",
            device="cpu",
            echo=lambda _: None,
        )
        package = args.out / f"package-{name}"
        export_package(args.out / f"run-{name}", package, overwrite=True, echo=lambda _: None)
        test_auc, test_ci = score_package(package, test, OPACITY.name)
        results.append(ArmResult(name, summary, test_auc, test_ci))
    print(
        f"{args.patients} labelled patients, {args.folds}-fold, {args.epochs} epochs, "
        f"{args.backbone}, {args.size}x{args.size}; test set {args.test_patients} patients"
    )
    for arm in results:
        print(arm.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
