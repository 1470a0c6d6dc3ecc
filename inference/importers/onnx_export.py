"""A source network to ONNX with a dynamic window-batch axis, checked on random windows.

The node runs 3D packages window by window, several windows per backend call, so the
graph's first axis must be dynamic. Export uses torch's TorchScript-based exporter
(``dynamo=False``): it needs nothing beyond torch, and it takes both a plain module
(``network_def`` plus weights) and a TorchScript ``model.ts``. The exported graph is
then compared with the source network on random windows in ONNX Runtime, at two batch
sizes, so that a graph that only works for the traced batch is caught here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import nn

from inference.importers.errors import ImportModelError

logger = logging.getLogger(__name__)

OPSET = 17
DEFAULT_TOLERANCE = 1e-3
_PARITY_BATCHES = (2, 1)  # the traced batch, and another one through the dynamic axis


@dataclass(frozen=True)
class ExportCheck:
    """What the parity check measured on one exported network."""

    output_channels: int
    max_abs_diff: float  # largest |torch - ONNX Runtime| over the parity windows
    output_scale: float  # largest |torch output|, to read the difference against


def _torch_output(module: nn.Module, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        out = module(torch.from_numpy(windows))
    if isinstance(out, list | tuple):  # deep supervision: the full-resolution head first
        out = out[0]
    return np.asarray(out.float().numpy(), dtype=np.float32)


def export_network(
    module: nn.Module,
    path: Path,
    *,
    window: tuple[int, ...],
    input_name: str,
    output_name: str,
    source: Path,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportCheck:
    """Export a network to ONNX and check it against the source on random windows.

    Parameters
    ----------
    module : torch.nn.Module
        The network in eval mode on the CPU (a plain module or TorchScript).
    path : pathlib.Path
        The ``.onnx`` file to write.
    window : tuple of int
        One window's shape without the batch axis: ``(C, a0, a1, a2)``.
    input_name, output_name : str
        The graph's input and output names, as ``model.toml`` declares them.
    source : pathlib.Path
        The weights file the network came from, named in errors.
    tolerance : float
        Largest allowed ``|torch - ONNX Runtime|``, relative to the output's scale
        when that exceeds 1.
    seed : int
        Seed of the random parity windows.

    Returns
    -------
    ExportCheck

    Raises
    ------
    ImportModelError
        When the network does not run on a window of that shape, does not export,
        or the graph disagrees with it beyond the tolerance.
    """
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((max(_PARITY_BATCHES), *window), dtype=np.float32)
    try:
        reference = _torch_output(module, windows)
    except RuntimeError as exc:
        raise ImportModelError(
            source, "network", f"does not run on a window of shape {list(window)}: {exc}"
        ) from exc
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                module,
                (torch.from_numpy(windows),),
                str(path),
                dynamo=False,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # the exporter raises many unrelated types for one cause
        raise ImportModelError(
            source, "network", f"{type(module).__name__} does not export to ONNX: {exc}"
        ) from exc
    worst = 0.0
    for batch in _PARITY_BATCHES:
        ours = np.asarray(session.run([output_name], {input_name: windows[:batch]})[0])
        theirs = _torch_output(module, windows[:batch]) if batch < len(windows) else reference
        if ours.shape != theirs.shape:
            raise ImportModelError(
                path, "graph", f"output shape {list(ours.shape)} != torch's {list(theirs.shape)}"
            )
        worst = max(worst, float(np.max(np.abs(ours - theirs))))
    scale = float(np.max(np.abs(reference)))
    if worst > tolerance * max(1.0, scale):
        raise ImportModelError(
            path,
            "graph",
            f"max |torch - ONNX Runtime| {worst:.3g} on random windows exceeds "
            f"{tolerance} x output scale {max(1.0, scale):.3g}",
        )
    logger.info("exported %s: parity max |diff| %.3g (output scale %.3g)", path, worst, scale)
    return ExportCheck(int(reference.shape[1]), worst, scale)
