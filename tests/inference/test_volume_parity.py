"""The node's windowed 3D path against MONAI's and nnU-Net's own pipelines.

Same real CT stack, same network (ONNX for the node, torch for the references),
same settings: per-label Dice >= 0.99 and volumes within 1% on the source grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from inference import load_model
from inference.preprocessing.plan import plan_series
from inference.preprocessing.volume import stack_geometry
from inference.spec import read_spec
from tests.inference.volume_data import (
    AXIAL,
    monai_segment,
    oblique,
    package_toml,
    real_ct_stack,
    save_stack,
    torch_network,
    write_package,
)

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

pytestmark = [
    pytest.mark.slow,
    # MONAI's reader warns that this machine has no GPU decoder; its transforms
    # warn about their own deprecated arguments.
    pytest.mark.filterwarnings("ignore::UserWarning:monai.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
SCALE_RANGE = 'method = "scale_range"\na_min = -1000.0\na_max = 1000.0\nclip = true'
_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _on_source_grid(
    array: npt.NDArray[np.generic], affine: npt.NDArray[np.float64], source: npt.NDArray[np.float64]
) -> npt.NDArray[np.generic]:
    """A reference result (index -> RAS ``affine``) permuted/flipped onto the node's
    (slice, row, column) grid (index -> LPS ``source``)."""
    mapping = np.linalg.solve(affine, _RAS @ source)
    axes = [int(np.argmax(np.abs(mapping[:3, m]))) for m in range(3)]
    assert np.allclose(np.abs(mapping[:3, :3])[axes, [0, 1, 2]], 1.0, atol=1e-3), mapping
    out = np.transpose(array, axes)
    flips = tuple(m for m in range(3) if mapping[axes[m], m] < 0)
    return np.flip(out, flips) if flips else out


def _agree(node: npt.NDArray[np.generic], reference: npt.NDArray[np.generic]) -> None:
    assert node.shape == reference.shape
    for label in (1, 2):
        ours, theirs = node == label, reference == label
        assert theirs.sum() > 100, f"label {label} nearly absent from the reference"
        dice = 2 * np.count_nonzero(ours & theirs) / (ours.sum() + theirs.sum())
        assert dice >= 0.99, f"label {label}: Dice {dice:.4f}"
        assert abs(ours.sum() / theirs.sum() - 1) <= 0.01, f"label {label} volume"


def _node(folder: Path, stack: Sequence[object], toml_text: str) -> tuple[np.ndarray, np.ndarray]:
    package = write_package(folder, toml_text)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(stack)  # type: ignore[arg-type]
    spec = read_spec(package)
    geometry = stack_geometry(plan_series(stack, spec).stacks[0], 0.1)  # type: ignore[arg-type]
    assert prediction.label_map is not None
    return prediction.label_map, geometry.affine


@pytest.mark.parametrize(
    ("orientation", "step", "tilt", "spacing"),
    [
        pytest.param(AXIAL, 3.0, 0.0, (1.5, 1.5, 2.0), id="axial-anisotropic"),
        pytest.param(oblique(20.0), 2.5, 0.0, (1.5, 1.5, 2.0), id="oblique"),
        pytest.param(FLIPPED, 2.0, 0.0, (1.2, 1.4, 1.6), id="lps-flipped"),
        pytest.param(AXIAL, 2.0, 0.7, (1.5, 1.5, 2.0), id="gantry-tilt"),
    ],
)
def test_matches_monai(
    tmp_path: Path,
    orientation: tuple[float, ...],
    step: float,
    tilt: float,
    spacing: tuple[float, float, float],
) -> None:
    stack = real_ct_stack(36, step_mm=step, orientation=orientation, tilt_mm=tilt)
    folder = save_stack(stack, tmp_path / "dicom")
    toml_text = package_toml(
        geometry=f'orientation = "RAS"\nspacing = {list(spacing)}',
        window='overlap = 0.25\nblending = "gaussian"\nbatch = 2',
        intensity=SCALE_RANGE,
    )
    node, source_affine = _node(tmp_path / "pkg", stack, toml_text)
    reference, affine = monai_segment(folder, torch_network(), spacing, (32, 32, 16))
    _agree(node, _on_source_grid(reference, affine, source_affine))


def _nnunet_plans(patch: Sequence[int], spacing: Sequence[float]) -> dict[str, object]:
    """A minimal nnU-Net v2 plans file for one 3D configuration with CTNormalization.

    Resampling is linear on every axis (order 1, order_z 1): the node's
    ``interpolation`` applies to all axes and does not model nnU-Net's separate-z
    nearest neighbour for anisotropic data.
    """
    linear = {"is_seg": False, "order": 1, "order_z": 1, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [36, 128, 128],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": [36, 128, 128],
                "spacing": list(spacing),
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": linear,
                "resampling_fn_seg_kwargs": {**linear, "is_seg": True},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": linear,
                "architecture": {"network_class_name": "unused", "arch_kwargs": {}},
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3000.0,
                "mean": 40.0,
                "median": 40.0,
                "min": -1024.0,
                "percentile_00_5": -900.0,
                "percentile_99_5": 1500.0,
                "std": 350.0,
            }
        },
    }


@pytest.mark.parametrize(
    ("step", "spacing", "mirror"),
    [
        pytest.param(3.0, (2.0, 1.0, 1.0), (), id="anisotropic"),
        pytest.param(1.5, (1.6, 1.2, 1.2), (0, 1, 2), id="mirrored"),
    ],
)
def test_matches_nnunet(
    tmp_path: Path, step: float, spacing: tuple[float, float, float], mirror: tuple[int, ...]
) -> None:
    sitk = pytest.importorskip("SimpleITK")
    predict = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    plans_handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler")
    patch = (16, 32, 32)
    stack = real_ct_stack(36, step_mm=step)
    folder = save_stack(stack, tmp_path / "dicom")
    toml_text = package_toml(
        geometry=f'orientation = "source"\nspacing = {list(spacing)}',
        window=(
            f'overlap = 0.5\nplacement = "even"\nblending = "gaussian"\nbatch = 2\n'
            f"mirror_axes = {list(mirror)}"
        ),
        intensity=(
            'method = "ct_normalization"\nlower = -900.0\nupper = 1500.0\nmean = 40.0\nstd = 350.0'
        ),
        patch=patch,
        interpolate="logits",
    )
    node, _ = _node(tmp_path / "pkg", stack, toml_text)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).astype(np.float32)[np.newaxis]
    plans = plans_handler.PlansManager(_nnunet_plans(patch, spacing))
    dataset = {"labels": {"background": 0, "tissue": 1, "bone": 2}, "channel_names": {"0": "CT"}}
    predictor = predict.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=bool(mirror),
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    network = torch_network()
    predictor.manual_initialization(
        network,
        plans,
        plans.get_configuration("3d_fullres"),
        [network.state_dict()],
        dataset,
        "nnUNetTrainer",
        tuple(mirror) or None,
    )
    reference = predictor.predict_single_npy_array(
        array, {"spacing": list(image.GetSpacing())[::-1]}, None, None, False
    )
    _agree(node, np.asarray(reference, dtype=np.uint8))
