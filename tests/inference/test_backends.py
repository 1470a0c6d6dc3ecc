"""Backend choice, the engine cache, the GPU gate, and the accelerator backends.

TensorRT and CUDA tests run only where the library and a GPU exist; elsewhere they
are skipped with the reason. ONNX Runtime is always present.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from inference import BackendUnavailableError, GpuGate, Segmentation, load_model
from inference.devices import cuda_device_count, resolve_device
from inference.engine_cache import EngineCache, EngineKey
from tests.inference.conftest import DEMO_CR, DEMO_CT
from tests.inference.dicom_factory import read_testdata
from tests.inference.graphs import segmenter_package

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = cuda_device_count() > 0

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (extra 'torch')")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
needs_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT,
    reason="tensorrt is not installed: its builder cannot be installed from the registries here",
)


def _ct_series() -> list[Dataset]:
    return [read_testdata("693_J2KI.dcm"), read_testdata("CT_small.dcm")]


def test_auto_picks_onnxruntime_on_a_cpu_machine(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inference")
    with load_model(DEMO_CT, device="cpu", intra_op_threads=1, inter_op_threads=1) as model:
        assert (model.backend_name, model.device) == ("onnxruntime", "cpu")
    assert any("auto picked onnxruntime on cpu" in r.getMessage() for r in caplog.records)


def test_onnxruntime_threads_do_not_spin_between_runs() -> None:
    """Spinning workers burn the CPU the decoding threads and the listener need."""
    from inference.backends.ort import SPINNING, OnnxRuntimeBackend

    with load_model(DEMO_CT, backend="onnxruntime", device="cpu") as model:
        backend = model._backend
        assert isinstance(backend, OnnxRuntimeBackend)
        options = backend._session.get_session_options()
        assert options.get_session_config_entry(SPINNING) == "0"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU, so auto would use it")
def test_auto_device_is_cpu_without_gpu() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="has 0 CUDA device"):
        resolve_device("cuda:0")


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="expected one of auto, tensorrt, onnxruntime, torch"):
        load_model(DEMO_CT, backend="openvino")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        load_model(DEMO_CT, device="tpu")
    with pytest.raises(ValueError, match="thread counts must be >= 0"):
        load_model(DEMO_CT, intra_op_threads=-1)


def test_tensorrt_on_cpu_says_why() -> None:
    reason = (
        "tensorrt Python package is not installed" if not HAS_TENSORRT else "needs a CUDA device"
    )
    with pytest.raises(BackendUnavailableError, match=reason):
        load_model(DEMO_CT, backend="tensorrt", device="cpu")


def test_torch_backend_needs_a_torch_file(tmp_path: Path) -> None:
    package = segmenter_package(tmp_path / "seg", size=(16, 16))
    reason = r"has no model\.pt2" if HAS_TORCH else "PyTorch is not installed"
    with pytest.raises(BackendUnavailableError, match=reason):
        load_model(package, backend="torch")


@pytest.mark.slow  # the first PyTorch import alone takes seconds
@needs_torch
@pytest.mark.parametrize("package", [DEMO_CT, DEMO_CR], ids=["ct", "cr"])
def test_torch_matches_onnxruntime_on_the_demo_models(package: Path) -> None:
    """The shipped torch.export program and the ONNX graph are the same network."""
    rng = np.random.default_rng(5)
    shape = (3, 1, *tuple(load_model(package, backend="onnxruntime").spec.input.size))
    batch = rng.uniform(0, 1, size=shape).astype(np.float32)
    with (
        load_model(package, backend="onnxruntime", device="cpu") as ort_model,
        load_model(package, backend="torch", device="cpu") as torch_model,
    ):
        expected = ort_model._backend.infer(iter([batch]))
        found = torch_model._backend.infer(iter([batch]))
    assert expected.keys() == found.keys()
    for name, value in expected.items():
        assert found[name].shape == value.shape
        assert np.abs(found[name] - value).max() < 1e-3 * max(1.0, float(np.abs(value).max()))


@needs_torch
def test_torch_and_onnxruntime_predict_the_same_masks() -> None:
    series = [read_testdata("CT_small.dcm")]
    with (
        load_model(DEMO_CT, backend="onnxruntime") as ort_model,
        load_model(DEMO_CT, backend="torch") as torch_model,
    ):
        a = ort_model.predict(series, keep_probabilities=True)
        b = torch_model.predict(series, keep_probabilities=True)
    assert isinstance(a, Segmentation) and isinstance(b, Segmentation)
    assert a.probabilities is not None and b.probabilities is not None
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-3
    assert (a.masks != b.masks).mean() < 1e-3


def test_engine_cache_keys_and_atomic_store(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    key = EngineKey("ab" * 32, "10.7.0", "NVIDIA H100 80GB HBM3", "fp16", "1-8x1x256x256")
    other = EngineKey("ab" * 32, "10.7.0", "NVIDIA H100 80GB HBM3", "fp32", "1-8x1x256x256")
    assert cache.load("demo", key) is None
    path = cache.store("demo", key, b"engine bytes")
    assert path.name.startswith("demo-fp16-") and path.suffix == ".engine"
    assert cache.load("demo", key) == b"engine bytes"
    assert cache.path("demo", other) != path and cache.load("demo", other) is None
    assert [p.name for p in (tmp_path / "engines").iterdir()] == [path.name]  # no temp left


def test_gpu_gate_bounds_concurrent_runs() -> None:
    gate = GpuGate(slots=1)
    running, peak = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with gate.hold("cuda:0"):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert peak[0] == 1
    with gate.hold("cpu"), gate.hold("cpu"):  # the CPU is not gated
        pass
    with pytest.raises(ValueError, match="slots must be at least 1"):
        GpuGate(slots=0)


@pytest.mark.gpu
@needs_cuda
@needs_tensorrt
def test_tensorrt_engine_is_built_cached_and_agrees(tmp_path: Path) -> None:
    series = _ct_series()[:1]
    with load_model(DEMO_CT, backend="onnxruntime", device="cpu") as reference:
        expected = reference.predict(series)
    started = time.monotonic()
    with load_model(DEMO_CT, backend="tensorrt", cache_dir=tmp_path) as model:
        first_start = time.monotonic() - started
        found = model.predict(series)
    assert list(tmp_path.glob("demo-ct-bone-fp16-*.engine"))
    started = time.monotonic()
    with load_model(DEMO_CT, backend="tensorrt", cache_dir=tmp_path):
        assert time.monotonic() - started < first_start
    assert isinstance(found, Segmentation) and isinstance(expected, Segmentation)
    assert (found.masks != expected.masks).mean() < 5e-3


@pytest.mark.gpu
@needs_cuda
@needs_torch
def test_torch_cuda_graphs_agree_with_onnxruntime() -> None:
    series = _ct_series()[:1]
    with (
        load_model(DEMO_CT, backend="onnxruntime", device="cpu") as reference,
        load_model(DEMO_CT, backend="torch", device="cuda") as model,
    ):
        expected, found = reference.predict(series), model.predict(series)
        again = model.predict(series)  # replays the captured graph
    assert isinstance(found, Segmentation) and isinstance(expected, Segmentation)
    assert isinstance(again, Segmentation)
    assert (found.masks != expected.masks).mean() < 5e-3
    assert np.array_equal(found.masks, again.masks)


def test_importing_inference_loads_no_framework() -> None:
    """The node imports `inference` on machines without PyTorch or TensorRT."""
    code = (
        "import sys, inference; "
        "loaded = {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(loaded & {'torch', 'onnxruntime', 'tensorrt'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
