"""The node's 3D path against MONAI's own pipeline, side by side, in one run.

    python -m benchmarks.volumes                    # 200-slice real CT, demo 3D package
    python -m benchmarks.volumes --slices 300 --labels-slices 300

Both read the same real CT from disk (pydicom's 512 x 512 ``693_UNCI.dcm`` made into
a volume, see ``tests/inference/volume_data.py``), run the same network (the
``demo-ct-body3d`` package's ONNX file, through ONNX Runtime on the CPU in both, so
that only the pipelines differ) with the same settings (RAS, 1.5 mm, scale range,
Gaussian 64^3 windows, overlap 0.25, two windows per call) and end with a label map
on the source grid:

* node: ``Model.predict`` (decode, geometry, resampling, windows, back to the slices);
* MONAI: ``LoadImaged(PydicomReader)``, ``Orientationd``, ``Spacingd``,
  ``ScaleIntensityRanged``, ``SlidingWindowInferer``, ``Activationsd``, ``Invertd``,
  ``AsDiscreted``, as a bundle's inference config chains them.

Each runs in its own process (peak RSS is the child's own); the table gives total
time, time inside the network, the rest (the pipeline's own cost), and peak RSS,
and the agreement (Dice per label) of the two label maps. Then a 100-label
network (the demo's features with a 101-channel head) runs through the node on a
300-slice CT, to show the peak memory of many-label accumulation. Goal: the node
at most 0.7x MONAI's total time and at most its peak memory; the 100-label run
within 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "demo-ct-body3d"
SPACING = (1.5, 1.5, 1.5)
PATCH = (64, 64, 64)


def _timed_session(
    onnx_path: Path, threads: int
) -> tuple[Any, Callable[[np.ndarray], np.ndarray], list[float]]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx_path), options, ["CPUExecutionProvider"])
    spent: list[float] = []

    def run(batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        spent.append(time.perf_counter() - started)
        return np.asarray(out)

    return session, run, spent


def _run_node(folder: Path, package: Path, threads: int) -> dict[str, Any]:
    from pydicom import dcmread

    from inference import load_model
    from inference.backends.ort import OnnxRuntimeBackend

    spent: list[float] = []
    original = OnnxRuntimeBackend.infer

    def timed(self: Any, batches: Any) -> Any:
        started = time.perf_counter()
        result = original(self, batches)
        spent.append(time.perf_counter() - started)
        return result

    OnnxRuntimeBackend.infer = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    datasets = [dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    with load_model(
        package, backend="onnxruntime", device="cpu", intra_op_threads=threads
    ) as model:
        prediction = model.predict(datasets)
    total = time.perf_counter() - started
    assert prediction.label_map is not None
    np.save(folder.parent / "node.npy", prediction.label_map)
    return {
        "total": total,
        "model": sum(spent),
        "counts": prediction.voxel_counts().sum(0).tolist(),
    }


def _run_monai(folder: Path, package: Path, threads: int) -> dict[str, Any]:
    import torch

    from tests.inference.volume_data import monai_segment

    torch.set_num_threads(threads)
    _, run, spent = _timed_session(package / "model.onnx", threads)

    def network(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(batch.numpy()))

    started = time.perf_counter()
    labels, _ = monai_segment(folder, network, SPACING, PATCH)
    total = time.perf_counter() - started
    # MONAI's array is (column, row, slice) with the slices in the node's order.
    np.save(folder.parent / "monai.npy", np.ascontiguousarray(labels.transpose(2, 1, 0)))
    return {"total": total, "model": sum(spent), "counts": np.bincount(labels.ravel())[1:].tolist()}


def _many_labels(folder: Path, package: Path, labels: int) -> Path:
    """The demo's features with a ``labels + 1`` channel 1x1x1 head (seeded weights)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(package / "model.onnx"))
    graph = model.graph
    last = graph.node[-1]  # the demo's 1x1x1 head: reuse its input features
    features = last.input[0]
    width = next(
        numpy_helper.to_array(i).shape[1] for i in graph.initializer if i.name == last.input[1]
    )
    rng = np.random.default_rng(5)
    weight = rng.normal(0.0, 1.0, (labels + 1, width, 1, 1, 1)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, labels + 1).astype(np.float32)
    graph.node.remove(last)
    graph.initializer.extend(
        [numpy_helper.from_array(weight, "many_w"), numpy_helper.from_array(bias, "many_b")]
    )
    graph.node.append(helper.make_node("Conv", [features, "many_w", "many_b"], ["logits"]))
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            "logits", onnx.TensorProto.FLOAT, ["batch", labels + 1, *PATCH]
        )
    )
    target = folder / "many"
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target / "model.onnx"))
    text = (package / "model.toml").read_text()
    head, _, _ = text.partition("[[output.labels]]")
    entries = "".join(
        f'[[output.labels]]\nname = "structure {n:03d}"\n'
        'finding = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }\n'
        'category = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }\n\n'
        for n in range(1, labels + 1)
    )
    (target / "model.toml").write_text(
        head.replace('name = "demo-ct-body3d"', 'name = "bench-many-labels"')
        + entries
        + '[runtime]\nmax_batch = 2\nprecision = "fp16"\n'
    )
    return target


def _child(kind: str, folder: Path, package: Path, threads: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.volumes",
        "--child",
        kind,
        str(folder),
        str(package),
    ]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _series(folder: Path, slices: int) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.inference.volume_data import real_ct_stack, save_stack

    return save_stack(real_ct_stack(slices, template="693_UNCI.dcm", step_mm=1.0), folder)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return float(2 * np.count_nonzero(x & y) / max(1, np.count_nonzero(x) + np.count_nonzero(y)))


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--labels-slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "FOLDER", "PACKAGE"))
    args = parser.parse_args(argv)
    if args.child:
        kind, folder, package = args.child
        warnings.simplefilter("ignore")
        runner = _run_node if kind == "node" else _run_monai
        result = runner(Path(folder), Path(package), args.threads)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = _series(work / "ct", args.slices)
        print(f"real CT: {args.slices} slices of 512 x 512 (693_UNCI.dcm), {args.threads} threads")
        rows = {kind: _child(kind, folder, DEMO, args.threads) for kind in ("monai", "node")}
        node, monai = np.load(work / "node.npy"), np.load(work / "monai.npy")
        print(f"{'pipeline':<8} {'total s':>8} {'model s':>8} {'other s':>8} {'peak RSS MiB':>13}")
        for kind, row in rows.items():
            other = row["total"] - row["model"]
            print(
                f"{kind:<8} {row['total']:8.2f} {row['model']:8.2f} {other:8.2f} "
                f"{row['peak_rss_mib']:13.0f}"
            )
        ratio = rows["node"]["total"] / rows["monai"]["total"]
        memory = rows["node"]["peak_rss_mib"] / rows["monai"]["peak_rss_mib"]
        print(f"node / MONAI: time {ratio:.2f}x (goal <= 0.7), peak RSS {memory:.2f}x (goal <= 1)")
        agreement = {k: round(_dice(node, monai, k), 4) for k in (1, 2, 3)}
        print(f"agreement (Dice per label, node vs MONAI): {agreement}")
        many_folder = _series(work / "ct-many", args.labels_slices)
        package = _many_labels(work, DEMO, args.labels)
        row = _child("node", many_folder, package, args.threads)
        print(
            f"{args.labels}-label network, {args.labels_slices} x 512 x 512 CT through the node: "
            f"total {row['total']:.1f} s, model {row['model']:.1f} s, "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB (goal <= 8192), "
            f"labels found {sum(1 for c in row['counts'] if c)}"
        )


if __name__ == "__main__":
    main()
