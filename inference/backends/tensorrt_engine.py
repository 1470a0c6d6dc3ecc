"""TensorRT: engines built from the package's ONNX file, cached, run on device buffers.

The builder parses ``model.onnx`` with `tensorrt.OnnxParser`, sets fp16 (and int8
with the package's calibration set), adds one optimisation profile for batch 1 to
``runtime.max_batch``, and serializes the engine into the `EngineCache`, so that the
next start only deserializes it. Device buffers are PyTorch CUDA tensors; outputs of
every batch stay on the GPU until the series is done and come back in one copy.

TensorRT is imported only here and only when this backend is built; without it the
backend raises `BackendUnavailableError` and ``auto`` moves on to ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Array, Backend, BackendOptions
from inference.devices import device_index, torch_available
from inference.engine_cache import EngineCache, EngineKey, default_cache_dir, file_sha256
from inference.errors import BackendUnavailableError, ModelPackageError
from inference.package import ModelPackage
from inference.spec import SPEC_FILE, Precision

logger = logging.getLogger(__name__)

_WORKSPACE_BYTES = 2 << 30


def tensorrt_available() -> bool:
    """Whether the ``tensorrt`` Python package can be imported, without importing it."""
    return importlib.util.find_spec("tensorrt") is not None


def _int8_calibrator(
    trt: Any, torch: Any, samples: np.ndarray, input_name: str, device: str
) -> Any:
    """An entropy calibrator that feeds the package's calibration inputs in batches."""

    base: Any = trt.IInt8EntropyCalibrator2

    class Calibrator(base):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = [
                torch.from_numpy(np.ascontiguousarray(b)).to(device)
                for b in np.array_split(samples, max(1, len(samples) // 8))
            ]
            self._index = 0

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches) or names != [input_name]:
                return None
            batch = self._batches[self._index]
            self._index += 1
            return [int(batch.data_ptr())]

        def read_calibration_cache(self) -> None:
            return None  # the engine cache already keeps the result

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return Calibrator()


class TensorRTBackend(Backend):
    """A TensorRT engine for one package, built on first use and cached.

    Raises
    ------
    BackendUnavailableError
        When ``tensorrt`` or PyTorch (for device buffers) is missing, the device is
        not a GPU, the package has no ONNX file, or the build fails.
    """

    name = "tensorrt"

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        super().__init__(package, options)
        if not tensorrt_available():
            raise BackendUnavailableError(self.name, "the tensorrt Python package is not installed")
        if not torch_available():
            raise BackendUnavailableError(self.name, "PyTorch is needed for CUDA device buffers")
        if not options.device.startswith("cuda"):
            raise BackendUnavailableError(self.name, f"needs a CUDA device, got {options.device}")
        if package.onnx_path is None:
            raise BackendUnavailableError(self.name, f"{package.path} has no model.onnx")
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        torch.cuda.set_device(device_index(options.device))
        engine_bytes = self._engine_bytes(package, options)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise BackendUnavailableError(self.name, "the cached engine did not deserialize")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self._outputs = [n for n in names if n not in self._inputs]
        self._stream = torch.cuda.Stream(device=options.device)
        self._lock = threading.Lock()  # an execution context runs one series at a time

    def _profile(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        spec = self.package.spec
        shape = (spec.input.channels, *spec.input.size)
        return (1, *shape), (spec.runtime.max_batch, *shape)

    def _engine_bytes(self, package: ModelPackage, options: BackendOptions) -> bytes:
        trt, torch = self._trt, self._torch
        assert package.onnx_path is not None  # checked in __init__
        smallest, largest = self._profile()
        key = EngineKey(
            onnx_sha256=file_sha256(package.onnx_path),
            tensorrt_version=str(trt.__version__),
            gpu_name=str(torch.cuda.get_device_name(device_index(options.device))),
            precision=package.spec.runtime.precision.value,
            profile=f"{smallest[0]}-{'x'.join(map(str, largest))}",
        )
        cache = EngineCache(options.cache_dir or default_cache_dir())
        cached = cache.load(package.spec.model.name, key)
        if cached is not None:
            return cached
        logger.info(
            "building TensorRT engine for %s (%s); this takes a while once",
            package.spec.model.name,
            key.precision,
        )
        engine = self._build(package.onnx_path, smallest, largest)
        cache.store(package.spec.model.name, key, engine)
        return engine

    def _build(self, onnx_path: Path, smallest: tuple[int, ...], largest: tuple[int, ...]) -> bytes:
        trt = self._trt
        spec = self.package.spec
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailableError(self.name, f"OnnxParser rejected {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
        precision = spec.runtime.precision
        if precision in (Precision.FP16, Precision.INT8):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision is Precision.INT8:
            samples = self._calibration_samples()
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _int8_calibrator(
                trt, self._torch, samples, spec.input.name, self.device
            )
        profile = builder.create_optimization_profile()
        optimum = (max(1, largest[0] // 2), *largest[1:])
        profile.set_shape(spec.input.name, smallest, optimum, largest)
        config.add_optimization_profile(profile)
        if precision is Precision.INT8:
            config.set_calibration_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailableError(self.name, f"engine build failed for {onnx_path}")
        return bytes(serialized)

    def _calibration_samples(self) -> np.ndarray:
        spec = self.package.spec
        path = self.package.path / spec.runtime.calibration
        try:
            samples = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise ModelPackageError(
                self.package.path / SPEC_FILE, "runtime.calibration", f"{path}: {exc}"
            ) from exc
        expected = (spec.input.channels, *spec.input.size)
        if samples.ndim != len(expected) + 1 or samples.shape[1:] != expected:
            raise ModelPackageError(
                self.package.path / SPEC_FILE,
                "runtime.calibration",
                f"{path} has shape {samples.shape}, expected (N, {', '.join(map(str, expected))})",
            )
        return samples

    def infer(self, batches: Iterable[Array]) -> dict[str, Array]:
        """Run the batches on device buffers (see `Backend.infer`)."""
        trt, torch = self._trt, self._torch
        input_name = self._inputs[0]
        input_dtype = _torch_dtype(torch, trt.nptype(self._engine.get_tensor_dtype(input_name)))
        parts: dict[str, list[Any]] = {name: [] for name in self._outputs}
        with self._lock, torch.cuda.stream(self._stream):
            for batch in batches:
                device_in = (
                    torch.from_numpy(np.ascontiguousarray(batch))
                    .pin_memory()
                    .to(self.device, dtype=input_dtype, non_blocking=True)
                )
                self._context.set_input_shape(input_name, tuple(device_in.shape))
                self._context.set_tensor_address(input_name, device_in.data_ptr())
                for name in self._outputs:
                    shape = tuple(self._context.get_tensor_shape(name))
                    dtype = _torch_dtype(torch, trt.nptype(self._engine.get_tensor_dtype(name)))
                    out = torch.empty(shape, dtype=dtype, device=self.device)
                    self._context.set_tensor_address(name, out.data_ptr())
                    parts[name].append(out)
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise RuntimeError(
                        f"TensorRT execution failed for {self.package.spec.model.name}"
                    )
            result = {
                name: torch.cat(chunks).float().cpu().numpy()
                for name, chunks in parts.items()
                if chunks
            }
        self._stream.synchronize()
        return result


def _torch_dtype(torch: Any, numpy_type: Any) -> Any:
    return {
        np.float16: torch.float16,
        np.float32: torch.float32,
        np.int32: torch.int32,
        np.int64: torch.int64,
    }.get(numpy_type, torch.float32)
