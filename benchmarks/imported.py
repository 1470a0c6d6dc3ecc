"""Imported models: the node vs the model's own tool, same CPU, same real CT.

    python -m benchmarks.imported                  # 60 slices of 512 x 512
    python -m benchmarks.imported --slices 140

The small test bundle and nnU-Net result of ``tests/importers`` (trained in a few
seconds, so nothing is downloaded) are imported with ``dicom-node import-model``;
then each contender runs as its own fresh process on the same DICOM folder, so
that wall time includes start-up and reading the series, and peak RSS is that
process's own (``wait4``, from a small launcher process, see `measured`):

* the node: ``inference.load_model(...).predict(series)`` on ONNX Runtime;
* ``python -m monai.bundle run`` (the bundle's own workflow, PydicomReader, NIfTI out);
* ``nnUNetPredictor.predict_single_npy_array`` on the series read with SimpleITK.

Also printed: the node's own predict time (inside its process) and its Dice
against the reference, so that a fast wrong answer cannot look good.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NODE = """
import json, sys, time
from pathlib import Path
import numpy as np, pydicom
from inference import load_model
started = time.perf_counter()
series = [pydicom.dcmread(p) for p in sorted(Path(sys.argv[2]).iterdir())]
with load_model(sys.argv[1], backend="onnxruntime", device="cpu") as model:
    ready = time.perf_counter()
    prediction = model.predict(series)
    done = time.perf_counter()
np.save(sys.argv[3], prediction.label_map)
print(json.dumps({"predict_s": done - ready, "total_s": done - started}))
"""

LAUNCHER = """
import json, os, subprocess, sys, time
command, out_path, err_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(out_path, "w") as out, open(err_path, "w") as err:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=out, stderr=err)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
print(json.dumps({"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024,
                  "returncode": os.waitstatus_to_exitcode(status)}))
"""

NNUNET = """
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np, SimpleITK as sitk, torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(sys.argv[2]))
sitk.WriteImage(reader.Execute(), sys.argv[3] + "_0000.nii.gz")
image, properties = SimpleITKIO().read_images([sys.argv[3] + "_0000.nii.gz"])
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
    perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
predictor.initialize_from_trained_model_folder(sys.argv[1], use_folds=(0, 1),
    checkpoint_name="checkpoint_final.pth")
np.save(sys.argv[3], np.asarray(predictor.predict_single_npy_array(image, properties)))
"""


@dataclass(frozen=True)
class Run:
    """One contender's process: wall seconds, peak RSS, its stdout."""

    wall_s: float
    peak_mib: float
    stdout: str


def measured(command: list[str]) -> Run:
    """Run a command in a fresh process; its wall time and its own peak RSS.

    A forked child starts with its parent's resident pages counted in its peak (Linux
    keeps the high-water mark across ``exec``), and this process holds torch after
    the set-up; so a small launcher process starts the command and reports its
    ``wait4`` figures.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "out", Path(folder) / "err"
        launcher = [sys.executable, "-c", LAUNCHER, json.dumps(command), str(out), str(err)]
        done = subprocess.run(
            launcher, cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        figures = json.loads(done.stdout)
        if figures["returncode"] != 0:
            raise RuntimeError(f"{command[:4]} failed: {err.read_text()[-2000:]}")
        return Run(figures["wall_s"], figures["peak_mib"], out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=60)
    args = parser.parse_args(argv)
    print_rows(run_all(args.slices), args.slices)


def print_rows(rows: list[tuple[str, str, Run, str]], slices: int) -> None:
    """The table: one row per contender, the node first for each model."""
    print(f"imported models on {slices} real CT slices (512 x 512), CPU, one process each")
    print(f"{'model':<22}{'runner':<28}{'wall s':>8}{'peak MiB':>10}  notes")
    for model, runner, run, notes in rows:
        print(f"{model:<22}{runner:<28}{run.wall_s:>8.1f}{run.peak_mib:>10.0f}  {notes}")


def _dice(ours: object, theirs: object) -> str:
    import numpy as np

    a, b = np.asarray(ours), np.asarray(theirs)
    values = [
        2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k)) for k in (1, 2)
    ]
    return "Dice vs reference " + ", ".join(f"{v:.4f}" for v in values)


def run_all(slices: int) -> list[tuple[str, str, Run, str]]:
    """Import both test models and run every contender once on one real CT."""
    print("setting up (training the two small test networks, seconds)...", file=sys.stderr)
    import nibabel
    import numpy as np

    from inference.importers import import_monai_bundle, import_nnunet
    from inference.preprocessing.plan import plan_series
    from inference.preprocessing.volume import stack_geometry
    from inference.spec import read_spec
    from tests.importers.sources import bundle_run_command, write_bundle, write_nnunet_result
    from tests.inference.test_volume_parity import _on_source_grid
    from tests.inference.volume_data import real_ct_stack, save_stack

    rows: list[tuple[str, str, Run, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        stack = real_ct_stack(slices, template="693_UNCI.dcm", step_mm=2.5, shuffle=False)
        dicom = save_stack(stack, work / "dicom")
        bundle = write_bundle(work / "bundle")
        import_monai_bundle(bundle, work / "bundle-pkg")
        results = write_nnunet_result(work / "results", folds=(0, 1))
        import_nnunet(results, work / "nnunet-pkg", configuration="3d_fullres", folds=("0", "1"))
        source_affine = stack_geometry(
            plan_series(stack, read_spec(work / "bundle-pkg")).stacks[0], 0.1
        ).affine

        node = measured(
            [sys.executable, "-c", NODE, str(work / "bundle-pkg"), str(dicom), str(work / "a.npy")]
        )
        monai = measured(bundle_run_command(bundle, dicom, work / "monai-out"))
        (written,) = (work / "monai-out").glob("*.nii*")
        image = nibabel.load(written)
        reference = np.squeeze(np.asarray(image.dataobj)).astype(np.uint8)
        reference = _on_source_grid(reference, np.asarray(image.affine), source_affine)
        timing = json.loads(node.stdout)
        rows.append(
            (
                "MONAI bundle (UNet)",
                "node (ONNX Runtime)",
                node,
                f"predict {timing['predict_s']:.1f} s; {_dice(np.load(work / 'a.npy'), reference)}",
            )
        )
        rows.append(("MONAI bundle (UNet)", "python -m monai.bundle run", monai, "reference"))

        node = measured(
            [sys.executable, "-c", NODE, str(work / "nnunet-pkg"), str(dicom), str(work / "b.npy")]
        )
        trainer = next((work / "results").glob("*/nnUNetTrainer__*"))
        nnunet = measured([sys.executable, "-c", NNUNET, str(trainer), str(dicom), str(work / "c")])
        timing = json.loads(node.stdout)
        dice = _dice(np.load(work / "b.npy"), np.load(work / "c.npy"))
        rows.append(
            (
                "nnU-Net (2 folds)",
                "node (ONNX Runtime)",
                node,
                f"predict {timing['predict_s']:.1f} s; {dice}",
            )
        )
        rows.append(("nnU-Net (2 folds)", "nnUNetPredictor", nnunet, "reference"))
    return rows


if __name__ == "__main__":
    main()
