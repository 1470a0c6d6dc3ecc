"""``dicom-node models -c CONFIG [--json]``: each configured model, checked and started.

For every ``[[models]]`` entry: the package's name, version and task, and the backend
and device that its ``backend``/``device`` settings resolve to on this machine (with
``auto``: TensorRT, then ONNX Runtime with CUDA, then ONNX Runtime on the CPU), and
for an imported package where it came from (``[origin]``: the MONAI bundle or nnU-Net
result, its version, and the licence file in the package). The
model is really started, so a TensorRT engine is built here once and cached under
``storage_dir/engines`` for ``serve`` to reuse. Exit status 1 when any model fails; a
model card written for another version is a warning. ``--card NAME`` prints that
model's card instead (`inference.card_document`): its surveillance plan is this
config's ``[drift]`` section, the thresholds in force here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicom_node.config import DriftSection, ModelConfig, NodeConfig, load_config
from inference import (
    InferenceError,
    ModelPackageError,
    SurveillancePlan,
    card_document,
    load_model,
    validate_package,
)


def add_parser(subparsers: Any) -> None:
    """Register ``models`` and its options."""
    parser = subparsers.add_parser(
        "models", help="list models with their version, task, backend and device"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.add_argument("--card", metavar="NAME", help="print this model's model_card.md")
    parser.set_defaults(run=run)


def surveillance_plan(drift: DriftSection, source: str) -> SurveillancePlan:
    """The node's ``[drift]`` settings as a model card's surveillance plan."""
    return SurveillancePlan(
        window_studies=drift.window_studies,
        window_days=drift.window_days,
        min_studies=drift.min_studies,
        psi_threshold=drift.psi_threshold,
        p_value=drift.p_value,
        source=f"[drift] of {source}",
    )


def print_card(config: NodeConfig, name: str, source: str) -> int:
    """Print the model card of the model ``name``; 1 when it has none or is broken."""
    entry = next((m for m in config.models if m.name == name), None)
    if entry is None:
        print(f"models --card: no model named {name!r} in the config", file=sys.stderr)
        return 1
    try:
        package = validate_package(entry.path)
    except ModelPackageError as exc:
        print(f"models --card: {exc}", file=sys.stderr)
        return 1
    text = card_document(entry.path, package.card, surveillance_plan(config.drift, source))
    if text is None:
        print(f"models --card: {name} has no model card in {entry.path}", file=sys.stderr)
        return 1
    if package.card_warning is not None:
        print(f"warning: {name}: {package.card_warning}", file=sys.stderr)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def describe(config: NodeConfig, entry: ModelConfig) -> dict[str, Any]:
    """What one model entry resolves to here; ``error`` set when it cannot start."""
    row: dict[str, Any] = {"name": entry.name, "path": str(entry.path)}
    try:
        model = load_model(
            entry.path,
            backend=entry.backend,
            device=entry.device,
            cache_dir=config.node.storage_dir / "engines",
            intra_op_threads=config.worker.intra_op_threads,
            inter_op_threads=config.worker.inter_op_threads,
        )
    except (InferenceError, ValueError) as exc:
        return {**row, "error": str(exc)}
    with model:
        info, origin = model.spec.model, model.spec.origin
        row |= {
            "model": info.name,
            "version": info.version,
            "task": info.task.value,
            "backend": model.backend_name,
            "device": model.device,
            "model_card": model.identity.model_card or None,
        }
        if model.package.card_warning is not None:
            row["card_warning"] = model.package.card_warning
    if origin is not None:
        row["origin"] = origin.model_dump(mode="json", exclude_none=True)
    return row


def _origin_text(origin: dict[str, Any]) -> str:
    """``; from monai-bundle NAME VERSION (licence: LICENSE)`` for the plain listing."""
    text = f"; from {origin['kind']} {origin['name']} {origin.get('version', '')}".rstrip()
    licence = origin.get("license_file")
    return f"{text} (licence: {licence})" if licence else f"{text} (no licence file)"


def run(args: argparse.Namespace) -> int:
    """Print each model's identity, backend and device; 1 when any cannot start."""
    config = load_config(args.config)
    if args.card:
        return print_card(config, args.card, str(args.config))
    rows = [describe(config, entry) for entry in config.models]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['name']}: ERROR {row['error']}")
            else:
                origin = _origin_text(row["origin"]) if "origin" in row else ""
                print(
                    f"{row['name']}: {row['model']} {row['version']} ({row['task']}), "
                    f"{row['backend']} on {row['device']}{origin}"
                )
                if "card_warning" in row:
                    print(f"warning: {row['name']}: {row['card_warning']}", file=sys.stderr)
    return 1 if any("error" in row for row in rows) else 0
