"""ONNX Runtime: the CUDA execution provider where present, the CPU otherwise."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from inference.backends.base import Array, Backend, BackendOptions, concatenate
from inference.devices import device_index
from inference.errors import BackendUnavailableError
from inference.package import ModelPackage

logger = logging.getLogger(__name__)

SPINNING = "session.intra_op.allow_spinning"


def cuda_provider_available() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class OnnxRuntimeBackend(Backend):
    """An `onnxruntime.InferenceSession` with thread counts from the node config.

    Raises
    ------
    BackendUnavailableError
        When the package has no ONNX file, or CUDA is asked for and this onnxruntime
        build has no CUDA execution provider.
    """

    name = "onnxruntime"

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        super().__init__(package, options)
        import onnxruntime

        if package.onnx_path is None:
            raise BackendUnavailableError(self.name, f"{package.path} has no model.onnx")
        session_options = onnxruntime.SessionOptions()
        session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.log_severity_level = 3  # errors only: warnings go through our logger
        # ONNX Runtime's worker threads spin-wait after every run by default: on the
        # node's few cores that burns the CPU the decoding threads and the listener
        # need (2D CT model: 40% of Model.predict's CPU time, benchmarks.pipeline).
        session_options.add_session_config_entry(SPINNING, "0")
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if options.device.startswith("cuda"):
            if not cuda_provider_available():
                raise BackendUnavailableError(
                    self.name, "this onnxruntime build has no CUDAExecutionProvider"
                )
            providers.insert(
                0, ("CUDAExecutionProvider", {"device_id": device_index(options.device)})
            )
        self._session = onnxruntime.InferenceSession(
            str(package.onnx_path), sess_options=session_options, providers=providers
        )
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._output_names = [o.name for o in self._session.get_outputs()]
        logger.info(
            "onnxruntime session for %s on %s (providers %s)",
            package.spec.model.name,
            options.device,
            self._session.get_providers(),
        )

    def infer(self, batches: Iterable[Array]) -> dict[str, Array]:
        """Run the batches through the session (see `Backend.infer`)."""
        parts: dict[str, list[Array]] = {name: [] for name in self._output_names}
        for batch in batches:
            feed = {self._input_name: np.ascontiguousarray(batch, dtype=self._input_dtype)}
            for name, value in zip(
                self._output_names, self._session.run(self._output_names, feed), strict=True
            ):
                parts[name].append(np.asarray(value))
        return concatenate(parts)
