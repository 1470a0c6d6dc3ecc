"""Imported packages give their source tool's answer: the node vs ``monai.bundle run`` and
vs ``nnUNetPredictor`` on the same real CT, per-label Dice >= 0.99 and volumes within 1%.

The bundle runs as its users run it (``python -m monai.bundle run`` reading the DICOM
folder with MONAI's PydicomReader and writing NIfTI); nnU-Net predicts on the series
read by SimpleITK through its own ``SimpleITKIO``, as ``nnUNetv2_predict`` reads images.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import Dataset

from inference import load_model
from inference.importers import import_monai_bundle, import_nnunet
from inference.preprocessing.plan import plan_series
from inference.preprocessing.volume import stack_geometry
from inference.spec import read_spec
from tests.importers.sources import bundle_run_command, write_bundle, write_nnunet_result
from tests.inference.test_volume_parity import _agree, _on_source_grid
from tests.inference.volume_data import oblique, real_ct_stack, save_stack

pytestmark = [
    pytest.mark.slow,
    # nnU-Net and MONAI warn about this machine (no GPU decoder, CPU-only predictor).
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def node_label_map(
    package: Path, stack: Sequence[Dataset]
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.float64]]:
    """The node's label map on the source grid and that grid's affine (index -> LPS)."""
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(stack)
    geometry = stack_geometry(plan_series(stack, read_spec(package)).stacks[0], 0.1)
    assert prediction.label_map is not None
    return prediction.label_map, geometry.affine


def monai_bundle_run(bundle: Path, dicom: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """``python -m monai.bundle run`` on a DICOM folder; its NIfTI label map and affine."""
    import nibabel

    completed = subprocess.run(
        bundle_run_command(bundle, dicom, out),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (written,) = out.glob("*.nii*")
    image = nibabel.load(written)
    return np.squeeze(np.asarray(image.dataobj)).astype(np.uint8), np.asarray(image.affine)


@pytest.mark.parametrize(
    "orientation",
    [
        pytest.param((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), id="axial"),
        pytest.param(oblique(20.0), id="oblique"),
    ],
)
def test_imported_bundle_matches_monai_bundle_run(
    tmp_path: Path, orientation: tuple[float, ...]
) -> None:
    stack = real_ct_stack(30, step_mm=2.5, orientation=orientation)
    dicom = save_stack(stack, tmp_path / "dicom")
    bundle = write_bundle(tmp_path / "bundle")
    reference, affine = monai_bundle_run(bundle, dicom, tmp_path / "monai-out")
    result = import_monai_bundle(bundle, tmp_path / "pkg")
    node, source_affine = node_label_map(result.package.path, stack)
    _agree(node, _on_source_grid(reference, affine, source_affine))


def nnunet_predict(folder: Path, dicom: Path, folds: tuple[int, ...], mirror: bool) -> np.ndarray:
    """``nnUNetPredictor`` on the series as SimpleITK reads it: (slice, row, column) labels."""
    import SimpleITK as sitk
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom)))
    nifti = dicom.parent / "ct_0000.nii.gz"
    sitk.WriteImage(reader.Execute(), str(nifti))
    image, properties = SimpleITKIO().read_images([str(nifti)])
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(folder), use_folds=folds, checkpoint_name="checkpoint_final.pth"
    )
    return np.asarray(predictor.predict_single_npy_array(image, properties)).astype(np.uint8)


@pytest.mark.parametrize(
    ("folds", "mirror"),
    [pytest.param((0, 1), False, id="two-folds"), pytest.param((0,), True, id="mirrored")],
)
def test_imported_nnunet_matches_nnunet_predictor(
    tmp_path: Path, folds: tuple[int, ...], mirror: bool
) -> None:
    stack = real_ct_stack(30, step_mm=1.5)
    dicom = save_stack(stack, tmp_path / "dicom")
    folder = write_nnunet_result(tmp_path / "results", folds=folds)
    reference = nnunet_predict(folder, dicom, folds, mirror)
    result = import_nnunet(
        folder,
        tmp_path / "pkg",
        configuration="3d_fullres",
        folds=tuple(str(f) for f in folds),
        mirror=mirror,
    )
    node, _ = node_label_map(result.package.path, stack)
    _agree(node, reference)
