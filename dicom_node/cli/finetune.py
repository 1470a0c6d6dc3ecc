"""``dicom-node finetune``: fine-tune a pretrained network on labelled local DICOM.

torch is optional for the node: the training subpackage is imported only when this
command runs, so ``dicom-node --help`` and every other command work without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.cli.extras import missing_extra
from dicom_node.work.drift_reference import validation_profile


def add_parser(subparsers: Any) -> None:
    """Register ``finetune`` and its options."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a network on labelled DICOM with k-fold validation and a report",
        description="Train with patient-level k-fold cross-validation, write a validation "
        "report, and optionally export the best fold as a model package.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="training config (TOML): the package's "
        "[model], [input], [output] sections plus [training]",
    )
    parser.add_argument("--data", required=True, help="folder of DICOM files (and SEG masks)")
    parser.add_argument("--labels", help="CSV of labels per study or series (classification)")
    parser.add_argument("--out", required=True, help="run folder; a rerun resumes there")
    parser.add_argument("--weights", help="pretrained backbone state dict (torchvision layout)")
    parser.add_argument("--backbone", help="resnet18, resnet50, densenet121, unet_resnet18 ...")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--folds", type=int, help="k for k-fold; 1: a single hold-out split")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="learning rate of the new layers")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument(
        "--export",
        metavar="PACKAGE",
        help="also export the selected fold's network here, with its drift profile "
        "(profile.json) from that fold's validation studies",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --export: replace an existing package (checked before training starts)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train (and export when asked); 0 when done, 1 when training fails, 2 without torch."""
    try:
        from inference.finetune import (
            ExportError,
            LabelFileError,
            export_package,
            finetune,
            read_config,
        )
    except ImportError as exc:
        return missing_extra("fine-tuning", "train", exc)
    from inference import ModelPackageError

    overrides = {
        "weights": args.weights,
        "backbone": args.backbone,
        "epochs": args.epochs,
        "folds": args.folds,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    if args.export and Path(args.export).exists() and not args.force:
        print(
            f"finetune: package folder exists: {args.export} (replace it: --force); "
            "nothing was trained",
            file=sys.stderr,
        )
        return 1
    try:
        config = read_config(args.config, overrides)
        finetune(
            config,
            args.data,
            args.out,
            args.labels,
            args.device,
            not args.no_progress,
            threads=args.threads,
        )
        if args.export:
            export_package(args.out, args.export, overwrite=args.force)
            print(validation_profile(args.export, args.data, not args.no_progress).line())
    except (
        ModelPackageError,
        ExportError,
        LabelFileError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return 1
    return 0
