"""What the node costs per study: its own path against a plain script, same model, same SEG.

    python -m benchmarks.pipeline                  # 140-slice real CT, 11 rounds
    python -m benchmarks.pipeline --slices 300 --rounds 3

pydicom-data holds no multi-slice CT series, so the series is pydicom's real
512 x 512 CT slice ``693_UNCI.dcm`` made into a volume (each copy scaled about the
centre, see ``tests/inference/volume_data.py``), uncompressed, written as files.
The model is a trivial threshold segmentation package built here (window
[-1000, 1000] HU, ``logits = 200 * (x - level)``, sigmoid: bone above 150.5 HU),
so that everything measured is what surrounds the model:

* node: ``dcmread`` every file, ``inference.load_model(...)``, ``Model.predict``,
  ``sr_writer.build_results`` (SR + SEG), every object encoded to bytes;
* plain: what a user writes around the same ONNX file with pydicom, numpy,
  ONNX Runtime and highdicom: read the files, sort them along the normal, HU in
  float32 (Rescale Slope / Intercept), the same window, the network in batches
  of the package's size, ``logits > 0``, ``highdicom.seg.Segmentation``, encode.

Each run is a fresh process (``--child``), node and plain alternating, so that
imports, caches and highdicom's one-time tables are paid alike and the child's
``ru_maxrss`` is its own peak. Two tables: the first study in a fresh process
(a one-off script; highdicom loads the standard's tables, about 0.7 s of CPU
here), and the second study of a process that has run one (the running node,
which loads them at start-up, or a script looping over studies). The tables show
per-stage medians, the CPU time (all threads), the peak RSS and node/plain
ratios; the SEG pixel data of both is compared frame by frame (by referenced
source instance). The machine the figures are taken on may be loaded: compare
ratios within one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WINDOW = (0.0, 2000.0)  # centre, width in HU
LEVEL_HU = 150.5  # half-integer: no stored value sits on the decision boundary
STAGES = ("read", "model load", "pixels to masks", "result objects", "encode")


class _Clock:
    """Wall time per stage, in order."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.cpu_stages: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        """Start the first stage now (after the imports, which a service pays once)."""
        self.rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.cpu = self._last_cpu = time.process_time()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.stages[stage] = now - self._last
        self.cpu_stages[stage] = cpu - self._last_cpu
        self._last, self._last_cpu = now, cpu


def _encode(datasets: Sequence[Any]) -> list[bytes]:
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _run_node(paths: list[Path], package: Path, clock: _Clock) -> list[bytes]:
    import onnxruntime  # noqa: F401 - imported as the plain script does, off the clock
    from pydicom import dcmread

    from inference import load_model
    from sr_writer import build_results

    clock.restart()
    datasets = [dcmread(path) for path in paths]
    clock.lap("read")
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        clock.lap("model load")
        prediction = model.predict(datasets)
        clock.lap("pixels to masks")
    results = build_results(prediction, datasets)
    clock.lap("result objects")
    encoded = _encode(results)
    clock.lap("encode")
    return encoded


def _run_plain(paths: list[Path], package: Path, clock: _Clock) -> list[bytes]:
    import highdicom as hd
    import onnxruntime
    from pydicom import dcmread
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    clock.restart()
    datasets = [dcmread(path) for path in paths]
    row, column = (
        np.asarray(v, dtype=float) for v in np.reshape(datasets[0].ImageOrientationPatient, (2, 3))
    )
    normal = np.cross(row, column)
    datasets.sort(key=lambda ds: float(np.dot(normal, ds.ImagePositionPatient)))
    clock.lap("read")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        str(package / "model.onnx"), options, ["CPUExecutionProvider"]
    )
    clock.lap("model load")
    center, width = WINDOW
    low = np.float32(center - width / 2)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    mask = np.empty((len(datasets), rows, columns), dtype=bool)
    batch = 4  # the package's runtime.max_batch
    for start in range(0, len(datasets), batch):
        chunk = datasets[start : start + batch]
        hu = np.stack(
            [
                ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope)
                + np.float32(ds.RescaleIntercept)
                for ds in chunk
            ]
        )
        image = np.clip((hu - low) / np.float32(width), 0.0, 1.0)[:, np.newaxis]
        logits = session.run(None, {"image": image})[0]
        mask[start : start + len(chunk)] = logits[:, 0] > 0
    clock.lap("pixels to masks")
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="dense",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Bone,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="threshold-2d", family=codes.DCM.ArtificialIntelligence, version="0.1"
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="plain script",
        manufacturer_model_name="threshold-2d",
        software_versions="0.1",
        device_serial_number="1",
    )
    clock.lap("result objects")
    encoded = _encode([seg])
    clock.lap("encode")
    return encoded


RUNNERS: dict[str, Callable[[list[Path], Path, _Clock], list[bytes]]] = {
    "node": _run_node,
    "plain": _run_plain,
}


def _child(kind: str, folder: Path, package: Path, out: Path, second: bool) -> None:
    """One run in this (fresh) process; prints its figures as one JSON line.

    With ``second`` the study is run once before the measured run: the figures are
    those of the next study in a process that has done one (libraries' tables
    loaded, as in the node's service after its start-up warm-up).
    """
    warnings.simplefilter("ignore")
    paths = sorted(folder.glob("*.dcm"))
    if second:
        RUNNERS[kind](paths, package, _Clock())
    clock = _Clock()
    encoded = RUNNERS[kind](paths, package, clock)
    cpu = time.process_time() - clock.cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(encoded):
        (out / f"{index}.dcm").write_bytes(data)
    figures = {
        "stages": clock.stages,
        "cpu_stages": clock.cpu_stages,
        "cpu": cpu,
        "peak_rss_mib": peak,
        "start_mib": clock.rss_mib,
    }
    print(json.dumps(figures))


def _spawn(kind: str, folder: Path, package: Path, out: Path, second: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.pipeline", "--child", kind]
    command += [str(folder), str(package), str(out)] + (["--second"] if second else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def seg_frames(folder: Path) -> dict[tuple[str, int], bytes]:
    """The SEG among the files in a folder: (source SOP Instance UID, segment) -> frame bytes."""
    from pydicom import dcmread

    sys.path.insert(0, str(REPO))
    from tests.sr_writer.reading import seg_frames as frames_of

    for path in sorted(folder.glob("*.dcm")):
        ds = dcmread(path)
        if ds.Modality == "SEG":
            return frames_of(ds)
    raise RuntimeError(f"no SEG among the results in {folder}")


def _series(folder: Path, slices: int) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.inference.volume_data import real_ct_stack, save_stack

    return save_stack(real_ct_stack(slices, template="693_UNCI.dcm", step_mm=1.0), folder)


def _package(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.inference.graphs import segmenter_package

    center, width = WINDOW
    return segmenter_package(folder, size=(512, 512), center=center, width=width, level_hu=LEVEL_HU)


def _median(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(key(run) for run in runs)


def _table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
        (f"{stage} s", lambda r, s=stage: r["stages"][s], "{:9.3f}") for stage in STAGES
    ]
    rows += [("total s", lambda r: sum(r["stages"].values()), "{:9.3f}")]
    rows += [
        (f"  CPU {stage} s", lambda r, s=stage: r["cpu_stages"][s], "{:9.3f}") for stage in STAGES
    ]
    rows += [
        ("CPU s (all threads)", lambda r: r["cpu"], "{:9.3f}"),
        ("RSS after imports MiB", lambda r: r["start_mib"], "{:9.0f}"),
        ("peak RSS MiB", lambda r: r["peak_rss_mib"], "{:9.0f}"),
    ]
    lines = [
        f"{'median of ' + str(len(runs['node'])) + ' runs':<24} {'node':>9} {'plain':>9} "
        f"{'node/plain':>11}"
    ]
    for name, key, fmt in rows:
        node, plain = _median(runs["node"], key), _median(runs["plain"], key)
        ratio = f"{node / plain:10.2f}x" if plain > 0 else "-"
        lines.append(f"{name:<24} {fmt.format(node)} {fmt.format(plain)} {ratio:>11}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=140)
    # Round-to-round spread on a quiet 2-core VM is about 10%: medians of 11 hold still.
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--child", nargs=4, metavar=("KIND", "FOLDER", "PACKAGE", "OUT"))
    parser.add_argument("--second", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        _series(Path(args.prepare) / "ct", args.slices)
        _package(Path(args.prepare) / "package")
        return
    if args.child:
        kind, folder, package, out = args.child
        _child(kind, Path(folder), Path(package), Path(out), args.second)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Written by a child: Linux carries a process's peak RSS over to the programs
        # it starts, so the parent must never hold the series itself.
        command = [sys.executable, "-m", "benchmarks.pipeline", "--prepare", str(work)]
        subprocess.run([*command, "--slices", str(args.slices)], cwd=REPO, check=True)
        folder, package = work / "ct", work / "package"
        first: dict[str, list[dict[str, Any]]] = {"node": [], "plain": []}
        second: dict[str, list[dict[str, Any]]] = {"node": [], "plain": []}
        for round_number in range(args.rounds):
            order = ("node", "plain") if round_number % 2 == 0 else ("plain", "node")
            for kind in order:
                first[kind].append(_spawn(kind, folder, package, work / kind, False))
                second[kind].append(_spawn(kind, folder, package, work / kind, True))
        node, plain = seg_frames(work / "node"), seg_frames(work / "plain")
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"real CT: {args.slices} slices of 512 x 512 (693_UNCI.dcm, uncompressed), "
            f"threshold model on ONNX Runtime (CPU), {args.rounds} rounds alternating"
        )
        print(f"load average {load} on {os.cpu_count()} CPUs: compare ratios, not times")
        print("first study in a fresh process")
        print("\n".join(_table(first)))
        print("second study in the same process (tables loaded, as in the running node)")
        print("\n".join(_table(second)))
        same = "identical" if node == plain else "DIFFERENT"
        print(f"SEG pixel data, node vs plain: {same} ({len(node)} vs {len(plain)} frames)")


if __name__ == "__main__":
    main()
