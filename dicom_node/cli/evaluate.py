"""``dicom-node evaluate``: validate a package on an external labelled set.

The package runs exactly as the node runs it (`inference.load_model`, its
preprocessing and backend) and the report is fine-tuning's (`inference.finetune`):
AUC with its interval, sensitivity and specificity at the package's thresholds,
calibration, subgroups; for a segmentation package, Dice and HD95 (mm) per case
against DICOM SEG truth, with their means and intervals. The report needs the
``train`` extra (matplotlib, torch), so it is imported only when this command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.cli.extras import missing_extra


def add_parser(subparsers: Any) -> None:
    """Register ``evaluate`` and its options."""
    parser = subparsers.add_parser(
        "evaluate",
        help="validate a model package on an external labelled set, as the node runs it",
    )
    parser.add_argument("--model", required=True, help="the model package folder")
    parser.add_argument("--data", required=True, help="folder of DICOM files")
    parser.add_argument(
        "--labels",
        help="classification: CSV, StudyInstanceUID or SeriesInstanceUID and 0/1 per label; "
        "segmentation: a folder of DICOM SEG objects (default: the SEGs in --data)",
    )
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument(
        "--card", action="store_true", help="also record the figures in the package's model card"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print where the report is; 1 on bad input, 2 without the train extra."""
    try:
        from inference.finetune import LabelFileError, evaluate_package
    except ImportError as exc:
        return missing_extra("evaluate", "train", exc)
    from inference import InferenceError

    try:
        result = evaluate_package(
            args.model,
            args.data,
            args.labels,
            args.out,
            backend=args.backend,
            device=args.device,
            progress=not args.no_progress,
            card=args.card,
            seed=args.seed,
        )
    except (InferenceError, LabelFileError, FileNotFoundError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 1
    skipped = ", ".join(f"{kind} {n}" for kind, n in result.skipped.items() if n) or "none"
    print(f"{result.cases} case(s) evaluated, skipped: {skipped}; report: {result.report}")
    return 0
