"""Inference throughput: ONNX Runtime vs PyTorch eager, TensorRT on a GPU, preprocessing.

    python benchmarks/inference.py                       # ResNet-18 and the demo classifier
    python benchmarks/inference.py --models resnet18 --batches 1 8 --repeats 5
    python benchmarks/inference.py --preprocess-slices 300

Every figure is taken in this one run, on the same network and the same batch sizes:

* CPU: ONNX Runtime (the node's CPU backend) against PyTorch eager, images/s and
  median latency per batch; the goal is at least 1.5x PyTorch eager.
* GPU, only where CUDA exists: TensorRT fp16 (where ``tensorrt`` is installed)
  against PyTorch eager fp32 and fp16, and PyTorch fp16 with CUDA graphs (the
  node's torch backend); the goal is TensorRT at least 3x PyTorch eager fp32.
* Preprocessing: slices/s for a 300-slice JPEG 2000 CT (decode, HU, window, resize)
  through the node's thread pool, so that decoding never starves the accelerator.

Networks: ``resnet18`` (torchvision, random weights, 224 x 224, exported to ONNX in a
temporary folder) and the shipped demo packages (``demo-cr``, ``demo-ct``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from inference.backends.base import BackendOptions  # noqa: E402
from inference.package import ModelPackage, validate_package  # noqa: E402
from inference.preprocessing.loader import iter_prepared  # noqa: E402
from inference.preprocessing.plan import plan_series  # noqa: E402

DEMO = {
    "demo-cr": REPO / "models" / "demo-cr-classifier",
    "demo-ct": REPO / "models" / "demo-ct-bone",
}
RESNET_TOML = """
[model]
name = "resnet18"
version = "bench"
task = "classification"
intended_use = "benchmark only"

[input]
name = "image"
modalities = ["CR"]
size = [224, 224]
channels = 3

[input.intensity]
method = "minmax"

[output]
name = "logits"

[[output.labels]]
name = "class0"
finding = { value = "0", scheme = "99BENCH", meaning = "class 0" }
category = { value = "0", scheme = "99BENCH", meaning = "benchmark" }

[runtime]
max_batch = 64
precision = "fp16"
"""


@dataclass(frozen=True)
class Row:
    """One measurement: images/s and median latency of one batch."""

    network: str
    runner: str
    batch: int
    images_per_s: float
    latency_ms: float


def _time(
    run: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None
) -> list[float]:
    run()
    run()  # warm-up: allocations, kernel selection, graph capture
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return times


def _row(network: str, runner: str, batch: int, times: list[float]) -> Row:
    median = statistics.median(times)
    return Row(network, runner, batch, batch / median, median * 1000)


# --------------------------------------------------------------------------- networks


@contextmanager
def network(name: str) -> Iterator[tuple[ModelPackage, Any]]:
    """The package (ONNX) and the same network as an eager PyTorch module."""
    import torch

    if name in DEMO:
        package = validate_package(DEMO[name])
        if package.torch_path is None:
            raise SystemExit(f"{DEMO[name]} has no torch file to compare with")
        module = torch.export.load(str(package.torch_path)).module()
        yield package, module
        return
    import torchvision

    module = torchvision.models.resnet18(weights=None, num_classes=1).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        (path / "model.toml").write_text(RESNET_TOML.lstrip())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(2, 3, 224, 224),),
                str(path / "model.onnx"),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        yield validate_package(path), module


def _input(package: ModelPackage, batch: int) -> np.ndarray:
    spec = package.spec.input
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(batch, spec.channels, *spec.size)).astype(np.float32)


def _measure(
    name: str,
    runners: dict[str, Callable[[np.ndarray], Any]],
    package: ModelPackage,
    batches: list[int],
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> list[Row]:
    rows = []
    for batch in batches:
        data = _input(package, batch)
        for runner, run in runners.items():
            rows.append(_row(name, runner, batch, _time(partial(run, data), repeats, sync)))
    return rows


def cpu_rows(name: str, batches: list[int], repeats: int, threads: int) -> list[Row]:
    """ONNX Runtime (the node's CPU backend) and PyTorch eager on the same inputs."""
    import torch

    from inference.backends.ort import OnnxRuntimeBackend

    torch.set_num_threads(threads)
    with network(name) as (package, module):
        ort = OnnxRuntimeBackend(package, BackendOptions(device="cpu", intra_op_threads=threads))

        def eager(data: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(data))

        runners: dict[str, Callable[[np.ndarray], Any]] = {
            "onnxruntime cpu": lambda data: ort.infer(iter([data])),
            "pytorch eager cpu": eager,
        }
        return _measure(name, runners, package, batches, repeats)


def gpu_rows(name: str, batches: list[int], repeats: int, cache: Path) -> list[Row]:
    """PyTorch eager fp32/fp16, the node's torch backend (CUDA graphs) and TensorRT."""
    import importlib.util

    import torch

    from inference.backends.torch_module import TorchBackend

    with network(name) as (package, module):
        fp32 = module.to("cuda")
        fp16 = copy.deepcopy(fp32).half()

        def eager(net: Any, dtype: Any, data: np.ndarray) -> Any:
            with torch.inference_mode():
                return net(torch.from_numpy(data).to("cuda", dtype=dtype))

        runners: dict[str, Callable[[np.ndarray], Any]] = {
            "pytorch eager fp32": partial(eager, fp32, torch.float32),
            "pytorch eager fp16": partial(eager, fp16, torch.float16),
        }
        if package.torch_path is not None:
            graphs = TorchBackend(package, BackendOptions(device="cuda:0"))
            runners["torch fp16 cuda graphs"] = lambda data: graphs.infer(iter([data]))
        if importlib.util.find_spec("tensorrt") is not None:
            from inference.backends.tensorrt_engine import TensorRTBackend

            trt = TensorRTBackend(package, BackendOptions(device="cuda:0", cache_dir=cache))
            runners["tensorrt fp16"] = lambda data: trt.infer(iter([data]))
        return _measure(name, runners, package, batches, repeats, torch.cuda.synchronize)


# --------------------------------------------------------------------------- preprocessing


def j2k_series(slices: int) -> list[Dataset]:
    """A CT series of JPEG 2000 slices (the real 693_J2KR frame, one per position)."""
    template = dcmread(str(get_testdata_file("693_J2KR.dcm")))
    series_uid = generate_uid()
    series = []
    for k in range(slices):
        ds = template.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.ImagePositionPatient = [-122.5, -112.4, 47.0 + 1.25 * k]
        ds.InstanceNumber = slices - k
        series.append(ds)
    return series


def preprocessing_rows(slices: int, threads: list[int]) -> list[tuple[int, float]]:
    spec = validate_package(DEMO["demo-ct"]).spec
    series = j2k_series(slices)
    plan = plan_series(series, spec)
    results = []
    for count in threads:
        with ThreadPoolExecutor(max_workers=count) as pool:
            started = time.perf_counter()
            done = sum(1 for _ in iter_prepared(series, plan.stacks, spec, pool))
            elapsed = time.perf_counter() - started
        results.append((count, done / elapsed))
    return results


# --------------------------------------------------------------------------- report


def print_rows(rows: list[Row], baseline: str) -> None:
    """One line per measurement, with the ratio to the baseline runner."""
    header = f"{'network':<10} {'runner':<24} {'batch':>5} {'images/s':>10} {'ms/batch':>10}"
    print(f"{header} {'vs ' + baseline:>22}")
    base = {(r.network, r.batch): r.images_per_s for r in rows if r.runner == baseline}
    for r in rows:
        ratio = (
            r.images_per_s / base[(r.network, r.batch)]
            if (r.network, r.batch) in base
            else float("nan")
        )
        line = f"{r.network:<10} {r.runner:<24} {r.batch:>5} {r.images_per_s:>10.1f}"
        print(f"{line} {r.latency_ms:>10.2f} {ratio:>21.2f}x")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["resnet18", "demo-cr"], choices=["resnet18", *DEMO]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both"
    )
    parser.add_argument("--preprocess-slices", type=int, default=300)
    parser.add_argument(
        "--skip-cpu", action="store_true", help="only the GPU and preprocessing parts"
    )
    args = parser.parse_args(argv)

    import torch

    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), batches {args.batches}")
    if not args.skip_cpu:
        print("\n== CPU: ONNX Runtime vs PyTorch eager ==")
        rows = [
            row
            for name in args.models
            for row in cpu_rows(name, args.batches, args.repeats, args.threads)
        ]
        print_rows(rows, "pytorch eager cpu")
    if torch.cuda.is_available():
        print(f"\n== GPU: {torch.cuda.get_device_name(0)} ==")
        with tempfile.TemporaryDirectory() as cache:
            rows = [
                row
                for name in args.models
                for row in gpu_rows(name, args.batches, args.repeats, Path(cache))
            ]
        print_rows(rows, "pytorch eager fp32")
    else:
        print("\n(no CUDA device: GPU section not run)")
    if args.preprocess_slices:
        slices = args.preprocess_slices
        print(f"\n== Preprocessing: {slices}-slice JPEG 2000 CT to demo-ct-bone inputs ==")
        counts = sorted({1, os.cpu_count() or 1, min(8, os.cpu_count() or 1)})
        for count, rate in preprocessing_rows(args.preprocess_slices, counts):
            print(f"{count:>2} thread(s): {rate:8.1f} slices/s")


if __name__ == "__main__":
    main()
