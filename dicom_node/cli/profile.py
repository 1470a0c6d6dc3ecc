"""``dicom-node profile --model PKG --data DICOM_DIR [--out FILE]``: a drift reference.

Runs the package exactly as the node does on local studies and writes
``profile.json`` into the package (or ``--out``) from the same feature records the
node keeps per job (`dicom_node.work.drift_reference`). For a package that carries
none, e.g. an imported model, from studies it is known to suit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.work.drift import PROFILE_FILE
from dicom_node.work.drift_reference import build_package_profile
from inference import InferenceError


def add_parser(subparsers: Any) -> None:
    """Register ``profile`` and its options."""
    parser = subparsers.add_parser("profile", help="build a package's drift reference from studies")
    parser.add_argument("--model", required=True, help="the model package folder")
    parser.add_argument("--data", required=True, help="folder of DICOM files (any layout)")
    parser.add_argument("--out", help=f"where to write it (default: PKG/{PROFILE_FILE})")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the profile and say how many series it rests on; 1 when none could run."""
    try:
        built = build_package_profile(
            Path(args.model),
            Path(args.data),
            out=Path(args.out) if args.out else None,
            backend=args.backend,
            progress=not args.no_progress,
        )
    except (InferenceError, ValueError) as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 1
    print(built.line())
    return 0
