"""From a fine-tuning run to a model package the node runs unchanged.

The chosen fold's best weights are exported to ONNX with a dynamic batch axis; a
classifier's graph also outputs its last feature map, and its head is global
average pooling plus one linear layer, so that the node computes class activation
maps from the head's weight initializer. The package's ``model.toml`` is the
training config's spec with the thresholds chosen on validation and the CAM head
named; the package is then checked by `inference.validate_package`, and PyTorch and
ONNX Runtime are compared on held-out images before anything is called done.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from inference.errors import ModelPackageError
from inference.finetune.config import FEATURES_OUTPUT, LOGITS_OUTPUT, FinetuneConfig, exported_spec
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


def _fold(run_dir: Path, fold: int | None) -> int:
    if fold is not None:
        return fold
    return int(read_summary(run_dir)["best_fold"])


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
        Which fold's weights; by default the fold with the best validation metric.
    name, version : str, optional
        Override the model name and version of the training config.
    tolerance : float
        Largest allowed absolute difference between PyTorch and ONNX Runtime.
    overwrite : bool
        Replace an existing package folder.
    torch_program : bool
        Also write ``model.pt2`` (a ``torch.export`` program) so that the node's
        PyTorch backend can run the package; checked against PyTorch too.
    echo : callable
        Where the parity line is printed.

    Returns
    -------
    ExportResult

    Raises
    ------
    FileNotFoundError
        When the run is not finished or the fold has no weights.
    FileExistsError
        When the package folder exists and ``overwrite`` is false.
    ExportError
        When the graph's outputs differ from PyTorch beyond ``tolerance``.
    ModelPackageError
        When the written package does not validate.
    """
    run = Path(run_dir)
    target = Path(package_dir)
    config = load_run_config(run)
    summary = read_summary(run)
    chosen = _fold(run, fold)
    model = load_fold_model(run, chosen, config)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"package folder exists: {target} (overwrite it: --force)")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    images = np.load(run / f"fold-{chosen}" / PARITY_INPUTS).astype(np.float32)
    input_name = config.spec.input.name
    classifier = isinstance(model, Classifier)
    outputs = [LOGITS_OUTPUT, FEATURES_OUTPUT] if classifier else [LOGITS_OUTPUT]
    onnx_path = target / ONNX_FILE
    _export_graph(model, torch.from_numpy(images[:2]), onnx_path, input_name, outputs)
    labels = len(config.spec.output.labels)
    cam_weight = _cam_weight_name(onnx_path, labels) if classifier else None
    spec = exported_spec(config, list(summary["thresholds"]), cam_weight)
    info = spec.model.model_copy(
        update={k: v for k, v in (("name", name), ("version", version)) if v is not None}
    )
    spec = spec.model_copy(update={"model": info})
    header = (
        f"{info.name} {info.version}: written by `dicom-node export` from fold {chosen} of a "
        f"fine-tuning run\n(backbone {config.training.backbone.value}); provenance and "
        f"validation in {PROVENANCE_FILE}"
    )
    (target / SPEC_FILE).write_text(dumps(spec.model_dump(mode="json"), header), encoding="utf-8")
    diffs = parity_check(model, onnx_path, images, input_name, outputs)
    if torch_program:
        program_path = target / spec.runtime.torch_file
        _export_program(model, torch.from_numpy(images[:2]), program_path, spec.runtime.max_batch)
        loaded = torch.export.load(str(program_path)).module()
        reference = _outputs(model, torch.from_numpy(images))
        for name, ours, theirs in zip(
            outputs, reference, _outputs(loaded, torch.from_numpy(images)), strict=True
        ):
            diffs[f"{name} (torch program)"] = float(np.max(np.abs(ours - theirs)))
    result = ExportResult(validate_package(target), chosen, len(images), diffs)
    echo(result.parity_line())
    worst = max(diffs.values())
    if worst > tolerance:
        raise ExportError(
            onnx_path, "graph", f"max |PyTorch - ONNX Runtime| {worst:.3g} > {tolerance}"
        )
    provenance = {
        "run": str(run.resolve()),
        "fold": chosen,
        "fingerprint": config.fingerprint(),
        "training": config.training.model_dump(mode="json"),
        "validation": summary,
        "parity_max_abs_diff": diffs,
    }
    (target / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1), encoding="utf-8")
    logger.info("exported %s %s (fold %d) to %s", info.name, info.version, chosen, target)
    return result
