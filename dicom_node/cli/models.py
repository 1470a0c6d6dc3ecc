"""``dicom-node models -c CONFIG [--json]``: each configured model, checked and started.

For every ``[[models]]`` entry: the package's name, version and task, and the backend
and device that its ``backend``/``device`` settings resolve to on this machine (with
``auto``: TensorRT, then ONNX Runtime with CUDA, then ONNX Runtime on the CPU). The
model is really started, so a TensorRT engine is built here once and cached under
``storage_dir/engines`` for ``serve`` to reuse. Exit status 1 when any model fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicom_node.config import ModelConfig, NodeConfig, load_config
from dicom_node.errors import ConfigError
from inference import InferenceError, load_model


def add_parser(subparsers: Any) -> None:
    """Register ``models`` and its options."""
    parser = subparsers.add_parser(
        "models", help="list models with their version, task, backend and device"
    )
    parser.add_argument("-c", "--config", required=True, help="path to the node's TOML config")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.set_defaults(run=run)


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
        info = model.spec.model
        return {
            **row,
            "model": info.name,
            "version": info.version,
            "task": info.task.value,
            "backend": model.backend_name,
            "device": model.device,
        }


def run(args: argparse.Namespace) -> int:
    """Print each model's identity, backend and device; 1 when any cannot start."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    rows = [describe(config, entry) for entry in config.models]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['name']}: ERROR {row['error']}")
            else:
                print(
                    f"{row['name']}: {row['model']} {row['version']} ({row['task']}), "
                    f"{row['backend']} on {row['device']}"
                )
    return 1 if any("error" in row for row in rows) else 0
