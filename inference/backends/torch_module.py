"""PyTorch, for models that cannot be exported to ONNX: eager on the CPU, fp16 with
CUDA graphs on a GPU so that it is a fast path in its own right.

The package holds a ``torch.export`` program (``.pt2``, preferred) or a TorchScript
file (``.pt``; ``torch.jit`` is deprecated in recent PyTorch, so its FutureWarning is
silenced here while it still works). Outputs stay on the device until the whole
series has run, then come back to the host in one copy.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.backends.base import Array, Backend, BackendOptions
from inference.devices import torch_available
from inference.errors import BackendUnavailableError
from inference.package import ModelPackage
from inference.spec import Precision

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_WARMUP_RUNS = 3


def load_torch_module(path: str, device: str) -> Any:
    """Load a ``.pt2`` export program or a ``.pt`` TorchScript module onto a device."""
    import torch

    module: Any
    if path.endswith(".pt2"):
        module = torch.export.load(path).module()
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
            module = torch.jit.load(path, map_location="cpu")
            module.eval()
    return module.to(device)


class TorchBackend(Backend):
    """Runs a torch module; fp16 + CUDA graphs on a GPU unless the package asks fp32.

    Raises
    ------
    BackendUnavailableError
        When PyTorch is not installed or the package has no torch file.
    """

    name = "torch"

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        super().__init__(package, options)
        if not torch_available():
            raise BackendUnavailableError(self.name, "PyTorch is not installed (extra 'torch')")
        if package.torch_path is None:
            raise BackendUnavailableError(
                self.name, f"{package.path} has no {package.spec.runtime.torch_file}"
            )
        import torch

        self._torch = torch
        self._on_gpu = options.device.startswith("cuda")
        self._dtype = (
            torch.float16
            if self._on_gpu and package.spec.runtime.precision is not Precision.FP32
            else torch.float32
        )
        module = load_torch_module(str(package.torch_path), options.device)
        self._module = module.to(self._dtype) if self._on_gpu else module
        self._lock = threading.Lock()  # one series at a time through the static buffers
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: tuple[torch.Tensor, ...] = ()
        if not self._on_gpu and options.intra_op_threads:
            torch.set_num_threads(options.intra_op_threads)
        logger.info(
            "torch module %s on %s (%s%s)",
            package.torch_path,
            options.device,
            str(self._dtype).removeprefix("torch."),
            ", CUDA graphs" if self._on_gpu else "",
        )

    def _outputs(self, value: Any) -> tuple[torch.Tensor, ...]:
        if isinstance(value, self._torch.Tensor):
            return (value,)
        if isinstance(value, dict):
            return tuple(value[name] for name in self.package.output_names)
        return tuple(value)

    def _capture(self, example: torch.Tensor) -> None:
        """Record a CUDA graph for a full batch; later batches replay it."""
        torch = self._torch
        max_batch = self.package.spec.runtime.max_batch
        self._static_in = torch.zeros(
            (max_batch, *example.shape[1:]), dtype=self._dtype, device=example.device
        )
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_RUNS):
                self._module(self._static_in)
        torch.cuda.current_stream(example.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._outputs(self._module(self._static_in))
        self._graph = graph

    def _run_graph(self, batch: torch.Tensor) -> Sequence[torch.Tensor]:
        if (
            self._graph is None
            or self._static_in is None
            or self._static_in.shape[1:] != batch.shape[1:]
        ):
            self._capture(batch)
        assert self._graph is not None and self._static_in is not None  # set by _capture
        count = batch.shape[0]
        self._static_in[:count].copy_(batch)
        self._static_in[count:].zero_()
        self._graph.replay()
        return [out[:count].clone() for out in self._static_out]

    def infer(self, batches: Iterable[Array]) -> dict[str, Array]:
        """Run the batches (see `Backend.infer`); outputs return to the host once."""
        torch = self._torch
        names = self.package.output_names
        parts: list[list[Any]] = [[] for _ in names]
        with self._lock, torch.inference_mode():
            for batch in batches:
                tensor = torch.from_numpy(np.ascontiguousarray(batch))
                if self._on_gpu:
                    tensor = tensor.pin_memory().to(
                        self.device, dtype=self._dtype, non_blocking=True
                    )
                    outputs = self._run_graph(tensor)
                else:
                    outputs = self._outputs(self._module(tensor))
                for chunks, out in zip(parts, outputs, strict=True):
                    chunks.append(out)
            return {
                name: torch.cat(chunks).float().cpu().numpy()
                for name, chunks in zip(names, parts, strict=True)
                if chunks
            }
