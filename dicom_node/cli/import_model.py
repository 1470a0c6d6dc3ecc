"""``dicom-node import-model``: a MONAI bundle or an nnU-Net v2 result as a model package.

``import-model monai-bundle BUNDLE_DIR --out PKG`` and ``import-model nnunet RESULT_DIR
--configuration 3d_fullres --folds 0 1 2 3 4 --out PKG``: the source's preprocessing,
windows and labels are mapped onto ``model.toml``, its networks exported to ONNX and
checked on random windows. Prints the parity figures, every source step that has no
effect in the node, and the labels left with a generic concept. Exit status 1 when
the source cannot be mapped (the error names its file and key), 2 without the extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.cli.extras import missing_extra


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="the package folder to write")
    parser.add_argument(
        "--labels", type=Path, help="label mapping file (TOML): SNOMED CT codes per label name"
    )
    parser.add_argument("--name", help="model name in model.toml (default: from the source)")
    parser.add_argument("--version", help="model version in model.toml (default: the source's)")
    parser.add_argument("--modality", help="DICOM modality, when the source does not say")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest allowed |source - ONNX Runtime| on random windows (default 1e-3)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load checkpoints holding Python objects (runs code from the file: trust it)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing package")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import-model", help="turn a MONAI bundle or an nnU-Net v2 result into a model package"
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    bundle = kinds.add_parser("monai-bundle", help="a MONAI bundle folder")
    bundle.add_argument("source", type=Path, help="the bundle folder (configs/, models/)")
    _common(bundle)
    nnunet = kinds.add_parser("nnunet", help="an nnU-Net v2 result folder")
    nnunet.add_argument(
        "source", type=Path, help="TRAINER__PLANS__CONFIGURATION folder, or the dataset's"
    )
    nnunet.add_argument("--configuration", required=True, help="e.g. 3d_fullres")
    nnunet.add_argument(
        "--folds", nargs="+", default=["0"], help="folds to ensemble (default 0; or 'all')"
    )
    nnunet.add_argument(
        "--mirror", action="store_true", help="test-time mirroring as nnU-Net predicts (slower)"
    )
    _common(nnunet)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from inference.importers import (
            ImportModelError,
            ImportOptions,
            import_monai_bundle,
            import_nnunet,
        )
    except ImportError as exc:
        return missing_extra("import-model", "import", exc)
    from inference import ModelPackageError

    options = ImportOptions(
        labels_file=args.labels,
        name=args.name,
        version=args.version,
        modality=args.modality,
        tolerance=args.tolerance,
        allow_pickle=args.allow_pickle,
        overwrite=args.force,
    )
    try:
        if args.kind == "monai-bundle":
            result = import_monai_bundle(args.source, args.out, options)
        else:
            result = import_nnunet(
                args.source,
                args.out,
                configuration=args.configuration,
                folds=tuple(args.folds),
                mirror=args.mirror,
                options=options,
            )
    except (ImportModelError, ModelPackageError, FileExistsError) as exc:
        print(f"import-model: {exc}", file=sys.stderr)
        return 1
    for line in result.report_lines():
        print(line)
    spec = result.package.spec
    print(f"{result.package.path}: {spec.model.name} {spec.model.version}")
    return 0
