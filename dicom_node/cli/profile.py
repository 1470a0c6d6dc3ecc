"""``dicom-node profile --model PKG --data DICOM_DIR [--out FILE]``: a drift reference.

Runs the package exactly as the node does (`inference.load_model`, one ``predict`` per
series) on local studies and writes ``profile.json`` into the package (or ``--out``)
from the same feature records the node keeps per job (`dicom_node.work.drift`). For a
package that carries none, e.g. an imported model, from studies it is known to suit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from dicom_node.work.drift import PROFILE_FILE, build_profile
from dicom_node.work.findings import series_findings
from inference import InferenceError, UnsupportedSeriesError, load_model


def add_parser(subparsers: Any) -> None:
    """Register ``profile`` and its options."""
    parser = subparsers.add_parser("profile", help="build a package's drift reference from studies")
    parser.add_argument("--model", required=True, help="the model package folder")
    parser.add_argument("--data", required=True, help="folder of DICOM files (any layout)")
    parser.add_argument("--out", help=f"where to write it (default: PKG/{PROFILE_FILE})")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _series_files(root: Path) -> dict[str, list[Path]]:
    series: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "SeriesInstanceUID" in header:
            series[str(header.SeriesInstanceUID)].append(path)
    return dict(series)


def run(args: argparse.Namespace) -> int:
    """Write the profile and say how many series it rests on; 1 when none could run."""
    try:
        model = load_model(args.model, args.backend)
    except InferenceError as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 1
    records, skipped = [], 0
    with model:
        series = _series_files(Path(args.data))
        for files in tqdm(
            list(series.values()), desc="profile", unit="series", disable=args.no_progress
        ):
            datasets = [pydicom.dcmread(path) for path in files]
            try:
                records.append(series_findings(model.predict(datasets), datasets[0]))
            except UnsupportedSeriesError:
                skipped += 1
        identity = model.identity
    if not records:
        print(f"profile: no series in {args.data} that {args.model} takes", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.model) / PROFILE_FILE
    document = build_profile(identity.name, identity.version, records)
    out.write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(f"{out}: profile of {len(records)} series ({skipped} the model does not take)")
    return 0
