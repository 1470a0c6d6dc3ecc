"""From a fine-tuning run to a model package the node runs unchanged.

The run's selected fold's best weights (or another fold's, on request) are exported
to ONNX with a dynamic batch axis; a classifier's graph also outputs its last
feature map, and its head is global average pooling plus one linear layer, so that
the node computes class activation maps from the head's weight initializer. The
package's ``model.toml`` is the training config's spec with that fold's own
thresholds (chosen on that fold network's validation scores) and the CAM head
named; the package is then checked by `inference.validate_package`, and PyTorch and
ONNX Runtime are compared on held-out images before anything is called done.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from inference.errors import ModelPackageError
from inference.finetune.config import FEATURES_OUTPUT, LOGITS_OUTPUT, FinetuneConfig, exported_spec
from inference.finetune.model_card import write_package_card
from inference.finetune.networks import Classifier, build_network
from inference.finetune.run import load_run_config, read_summary
from inference.finetune.toml_writer import dumps
from inference.finetune.training import BEST, PARITY_INPUTS
from inference.package import ONNX_FILE, ModelPackage, validate_package
from inference.spec import SPEC_FILE

logger = logging.getLogger(__name__)

OPSET = 17
PROVENANCE_FILE = "training.json"
DEFAULT_TOLERANCE = 1e-3
HEAD_WEIGHT = "head.weight"  # the Classifier head's weight, kept by name in the graph


class ExportError(ModelPackageError):
    """The exported graph disagrees with PyTorch beyond the tolerance, or cannot be built."""


@dataclass(frozen=True)
class ExportResult:
    """The package written and the parity figures measured on held-out images."""

    package: ModelPackage
    fold: int
    parity_images: int
    max_abs_diff: dict[str, float]

    def parity_line(self) -> str:
        """The parity check as printed: max absolute difference per output."""
        diffs = ", ".join(f"{name} {value:.3g}" for name, value in self.max_abs_diff.items())
        return (
            f"parity PyTorch vs ONNX Runtime on {self.parity_images} held-out image(s): "
            f"max |difference| {diffs}"
        )


def _export_graph(
    model: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]
) -> None:
    axes = {name: {0: "batch"} for name in [input_name, *outputs]}
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs nothing beyond torch; the newer
        # torch.export-based one needs onnxscript, which the train extra does not pull.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _export_program(model: nn.Module, example: torch.Tensor, path: Path, max_batch: int) -> None:
    """A ``torch.export`` program with a dynamic batch axis, for the PyTorch backend."""
    batch = torch.export.Dim("batch", min=1, max=max(64, max_batch))
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def _cam_weight_name(path: Path, labels: int) -> str:
    """The initializer of the head's weight, (labels, channels), as the node reads it."""
    graph = onnx.load(str(path)).graph
    for init in graph.initializer:
        if init.name == HEAD_WEIGHT and len(init.dims) == 2 and init.dims[0] == labels:
            return HEAD_WEIGHT
    raise ExportError(path, "graph", f"no ({labels}, channels) initializer {HEAD_WEIGHT!r}")


def _outputs(model: nn.Module, images: torch.Tensor) -> list[npt.NDArray[np.float32]]:
    with torch.no_grad():
        out = model(images)
    tensors = out if isinstance(out, tuple) else (out,)
    return [t.float().numpy() for t in tensors]


def parity_check(
    model: nn.Module,
    onnx_path: Path,
    images: npt.NDArray[np.float32],
    input_name: str,
    output_names: list[str],
) -> dict[str, float]:
    """Max absolute difference per output between PyTorch and ONNX Runtime (CPU)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    theirs = session.run(output_names, {input_name: images})
    ours = _outputs(model, torch.from_numpy(images))
    return {
        name: float(np.max(np.abs(np.asarray(t) - o)))
        for name, t, o in zip(output_names, theirs, ours, strict=True)
    }


def _fold_and_thresholds(summary: dict[str, Any], fold: int | None) -> tuple[int, list[float]]:
    """The fold to export (the run's selected one by default) and its own thresholds.

    Raises
    ------
    ValueError
        When the run has no such fold.
    """
    chosen = int(summary["selected_fold"]) if fold is None else fold
    for row in summary["folds"]:
        if row["fold"] == chosen:
            return chosen, [float(t) for t in row["thresholds"]]
    known = [row["fold"] for row in summary["folds"]]
    raise ValueError(f"the run has no fold {chosen} (folds {known})")


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"package folder exists: {target} (replace it: --force)")


def _replace(staging: Path, target: Path) -> None:
    """Put the finished package in place; an existing one is removed only now."""
    if target.exists():
        retired = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


def load_fold_model(run_dir: Path, fold: int, config: FinetuneConfig) -> nn.Module:
    """The best weights of one fold, in eval mode on the CPU.

    Raises
    ------
    FileNotFoundError
        When the fold has no best weights.
    """
    best = run_dir / f"fold-{fold}" / BEST
    if not best.is_file():
        raise FileNotFoundError(f"no trained weights for fold {fold}: {best}")
    labels = len(config.spec.output.labels)
    t = config.training
    model = build_network(
        t.backbone,
        labels,
        config.spec.input.channels,
        output_stride=t.output_stride,
        pooling=t.pooling,
        depth=t.encoder_depth,
    )
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def export_package(
    run_dir: Path | str,
    package_dir: Path | str,
    *,
    fold: int | None = None,
    name: str | None = None,
    version: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    torch_program: bool = False,
    echo: Callable[[str], None] = print,
) -> ExportResult:
    """Export a fine-tuning run as a model package and check it.

    Parameters
    ----------
    run_dir : pathlib.Path or str
        A finished run folder (from `finetune`).
    package_dir : pathlib.Path or str
        The package folder to write (``model.toml``, ``model.onnx``,
        ``training.json``).
    fold : int, optional
        Which fold's network, with that fold's own thresholds; by default the fold
        the run selected (see `inference.finetune.selection`).
    name, version : str, optional
        Override the model name and version of the training config.
    tolerance : float
        Largest allowed absolute difference between PyTorch and ONNX Runtime.
    overwrite : bool
        Replace an existing package folder. Checked before any work; the package
        is written beside it and replaces it only once it is complete and checked,
        so a failed export leaves the old package as it was.
    torch_program : bool
        Also write ``model.pt2`` (a ``torch.export`` program) so that the node's
        PyTorch backend can run the package; checked against PyTorch too.
    echo : callable
        Where each step and the parity line are printed.

    Returns
    -------
    ExportResult

    Raises
    ------
    FileNotFoundError
        When the run is not finished or the fold has no weights.
    ValueError
        When the run has no such fold.
    FileExistsError
        When the package folder exists and ``overwrite`` is false.
    ExportError
        When the graph's outputs differ from PyTorch beyond ``tolerance``.
    ModelPackageError
        When the written package does not validate.
    """
    run = Path(run_dir)
    target = Path(package_dir)
    _check_target(target, overwrite)
    config = load_run_config(run)
    summary = read_summary(run)
    chosen, thresholds = _fold_and_thresholds(summary, fold)
    echo(f"exporting fold {chosen} of {run} with threshold(s) {thresholds}")
    model = load_fold_model(run, chosen, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        result = _write_package(
            staging,
            run,
            chosen,
            thresholds,
            config,
            model,
            name,
            version,
            tolerance,
            torch_program,
            echo,
        )
        provenance = {
            "run": str(run.resolve()),
            "fold": chosen,
            "thresholds": thresholds,
            "fingerprint": config.fingerprint(),
            "training": config.training.model_dump(mode="json"),
            "validation": summary,
            "parity_max_abs_diff": result.max_abs_diff,
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1), encoding="utf-8")
        write_package_card(run, staging, result.package.spec, chosen)
        _check_target(target, overwrite)  # another export may have written it meanwhile
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    package = validate_package(target)
    spec = package.spec
    logger.info(
        "exported %s %s (fold %d) to %s", spec.model.name, spec.model.version, chosen, target
    )
    return ExportResult(package, chosen, result.parity_images, result.max_abs_diff)


def _write_package(
    folder: Path,
    run: Path,
    chosen: int,
    thresholds: list[float],
    config: FinetuneConfig,
    model: nn.Module,
    name: str | None,
    version: str | None,
    tolerance: float,
    torch_program: bool,
    echo: Callable[[str], None],
) -> ExportResult:
    """Graph, ``model.toml`` (and the torch program) into ``folder``, parity-checked."""
    images = np.load(run / f"fold-{chosen}" / PARITY_INPUTS).astype(np.float32)
    input_name = config.spec.input.name
    classifier = isinstance(model, Classifier)
    outputs = [LOGITS_OUTPUT, FEATURES_OUTPUT] if classifier else [LOGITS_OUTPUT]
    onnx_path = folder / ONNX_FILE
    echo("writing the ONNX graph")
    _export_graph(model, torch.from_numpy(images[:2]), onnx_path, input_name, outputs)
    labels = len(config.spec.output.labels)
    cam_weight = _cam_weight_name(onnx_path, labels) if classifier else None
    spec = exported_spec(config, thresholds, cam_weight)
    info = spec.model.model_copy(
        update={k: v for k, v in (("name", name), ("version", version)) if v is not None}
    )
    spec = spec.model_copy(update={"model": info})
    header = (
        f"{info.name} {info.version}: written by `dicom-node export` from fold {chosen} of a "
        f"fine-tuning run\n(backbone {config.training.backbone.value}); provenance and "
        f"validation in {PROVENANCE_FILE}"
    )
    document = spec.model_dump(mode="json")
    if not torch_program:
        del document["runtime"]["torch_file"]  # name no file that is not there
    (folder / SPEC_FILE).write_text(dumps(document, header), encoding="utf-8")
    echo(f"comparing PyTorch and ONNX Runtime on {len(images)} held-out image(s)")
    diffs = parity_check(model, onnx_path, images, input_name, outputs)
    if torch_program:
        echo("writing the torch.export program")
        program_path = folder / spec.runtime.torch_file
        _export_program(model, torch.from_numpy(images[:2]), program_path, spec.runtime.max_batch)
        loaded = torch.export.load(str(program_path)).module()
        reference = _outputs(model, torch.from_numpy(images))
        for output, ours, theirs in zip(
            outputs, reference, _outputs(loaded, torch.from_numpy(images)), strict=True
        ):
            diffs[f"{output} (torch program)"] = float(np.max(np.abs(ours - theirs)))
    result = ExportResult(validate_package(folder), chosen, len(images), diffs)
    echo(result.parity_line())
    worst = max(diffs.values())
    if worst > tolerance:
        raise ExportError(
            onnx_path, "graph", f"max |PyTorch - ONNX Runtime| {worst:.3g} > {tolerance}"
        )
    return result
