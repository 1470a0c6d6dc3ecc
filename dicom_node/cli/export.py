"""``dicom-node export``: turn a fine-tuning run into a model package the node runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.cli.extras import missing_extra
from dicom_node.work.drift_reference import validation_profile


def add_parser(subparsers: Any) -> None:
    """Register ``export`` and its options."""
    parser = subparsers.add_parser(
        "export",
        help="export a fine-tuning run as a model package (ONNX + model.toml), parity-checked",
    )
    parser.add_argument(
        "--run", dest="run_dir", required=True, help="the run folder of `dicom-node finetune`"
    )
    parser.add_argument("--out", required=True, help="the package folder to write")
    parser.add_argument(
        "--fold",
        type=int,
        help="which fold's network, with its own thresholds (default: the run's selected fold)",
    )
    parser.add_argument("--name", help="model name in model.toml (default: the config's)")
    parser.add_argument("--version", help="model version in model.toml (default: the config's)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest allowed |PyTorch - ONNX Runtime| (default 1e-3)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing package (only once the new one is complete and checked)",
    )
    parser.add_argument(
        "--torch-program",
        action="store_true",
        help="also write model.pt2 (torch.export) for the PyTorch backend",
    )
    parser.add_argument(
        "--data",
        help="the run's DICOM folder: also write the package's drift profile (profile.json) "
        "from the exported fold's validation studies",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export and parity-check the package; 0 when written, 1 when export fails, 2 without torch."""
    try:
        from inference.finetune import ExportError, export_package
    except ImportError as exc:
        return missing_extra("export", "train", exc)
    from inference import ModelPackageError

    try:
        result = export_package(
            args.run_dir,
            args.out,
            fold=args.fold,
            name=args.name,
            version=args.version,
            tolerance=args.tolerance,
            overwrite=args.force,
            torch_program=args.torch_program,
            echo=lambda line: print(f"export: {line}", flush=True),
        )
        if args.data:
            print(validation_profile(args.out, args.data, not args.no_progress).line())
        else:
            print("export: no drift profile written (give --data, or run `dicom-node profile`)")
    except (ExportError, ModelPackageError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    spec = result.package.spec
    print(f"{result.package.path}: {spec.model.name} {spec.model.version} from fold {result.fold}")
    return 0
