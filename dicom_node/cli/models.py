"""``dicom-node models -c CONFIG [--json]``: each configured model, checked and started.

For every ``[[models]]`` entry: the package's name, version and task, and the backend
and device that its ``backend``/``device`` settings resolve to on this machine (with
``auto``: TensorRT, then ONNX Runtime with CUDA, then ONNX Runtime on the CPU), and
for an imported package where it came from (``[origin]``: the MONAI bundle or nnU-Net
result, its version, and the licence file in the package). The
model is really started, so a TensorRT engine is built here once and cached under
``storage_dir/engines`` for ``serve`` to reuse. Exit status 1 when any model fails.
``--card NAME`` prints that model's ``model_card.md`` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicom_node.config import ModelConfig, NodeConfig, load_config
from inference import InferenceError, load_model

# Written beside model.toml by `dicom-node evaluate --card` (inference.finetune.model_card).
CARD_FILE = "model_card.md"


def add_parser(subparsers: Any) -> None:
    """Register ``models`` and its options."""
    parser = subparsers.add_parser(
        "models", help="list models with their version, task, backend and device"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.add_argument("--card", metavar="NAME", help="print this model's model_card.md")
    parser.set_defaults(run=run)


def print_card(config: NodeConfig, name: str) -> int:
    """Print the model card of the model ``name``; 1 when it has none."""
    entry = next((m for m in config.models if m.name == name), None)
    if entry is None:
        print(f"models --card: no model named {name!r} in the config", file=sys.stderr)
        return 1
    card = entry.path / CARD_FILE
    if not card.is_file():
        print(f"models --card: {name} has no {CARD_FILE} in {entry.path}", file=sys.stderr)
        return 1
    print(card.read_text(encoding="utf-8"), end="")
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
        }
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
        return print_card(config, args.card)
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
    return 1 if any("error" in row for row in rows) else 0
