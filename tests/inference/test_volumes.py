"""The windowed 3D path piece by piece: geometry, intensity formulas, windows, ensembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import (
    BackendUnavailableError,
    ModelPackageError,
    UnsupportedSeriesError,
    load_model,
    validate_package,
)
from inference.preprocessing.grid import axis_codes, network_grid, resample
from inference.preprocessing.intensity import field_formula
from inference.preprocessing.stacks import list_frames, split_stacks
from inference.preprocessing.volume import (
    VolumeGeometryError,
    regular_volume,
    stack_geometry,
)
from inference.sliding_window import ensemble, importance_map, mirrored, window_starts
from inference.spec import Blending, GeometrySpec, IntensitySpec, Placement
from inference.volumes import foreground
from tests.inference.volume_data import (
    AXIAL,
    oblique,
    package_toml,
    real_ct_stack,
    torch_network,
    write_package,
)

SCALE_RANGE = 'method = "scale_range"\na_min = -1000.0\na_max = 1000.0\nclip = true'
GEOMETRY = 'orientation = "RAS"\nspacing = [1.5, 1.5, 2.0]'
WINDOW = "overlap = 0.25\nbatch = 2"


def _stack(datasets: list[object]):  # type: ignore[no-untyped-def]
    frames, _ = list_frames(datasets)  # type: ignore[arg-type]
    stacks, _ = split_stacks(frames, 0.5)
    return stacks[0]


def test_affine_uses_the_measured_step_not_slice_thickness() -> None:
    datasets = real_ct_stack(6, step_mm=3.0)
    for ds in datasets:
        ds.SliceThickness = 5.0
    geometry = stack_geometry(_stack(datasets), 0.1)
    assert geometry.spacing == pytest.approx((3.0, 0.661468, 0.661468), abs=1e-4)
    assert not geometry.sheared and not geometry.resampled
    # Voxel (k, i, j) lands on the position of slice k, row i, column j.
    first = min(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert geometry.affine[:3, 3] == pytest.approx([float(v) for v in first.ImagePositionPatient])
    assert axis_codes(geometry.affine) == "SPL"  # slices up, rows back, columns left


def test_sheared_stack_keeps_its_shear() -> None:
    geometry = stack_geometry(_stack(real_ct_stack(8, step_mm=2.0, tilt_mm=0.7)), 0.1)
    assert geometry.sheared
    step = geometry.affine[:3, 0]
    assert step == pytest.approx([0.0, 0.7, 2.0], abs=1e-4)  # off the normal by the tilt


def test_uneven_steps_are_refused_with_the_reason() -> None:
    stack = _stack(real_ct_stack(5, steps_mm=[2.0, 2.0, 5.0, 2.0]))
    with pytest.raises(VolumeGeometryError, match=r"uneven slice steps.*\[2\.0, 5\.0\] mm"):
        stack_geometry(stack, 0.1)


def test_uneven_steps_are_resampled_when_allowed() -> None:
    datasets = real_ct_stack(5, steps_mm=[2.0, 2.0, 4.0, 2.0], shuffle=False)
    geometry = stack_geometry(_stack(datasets), 0.1, resample_uneven=True)
    assert geometry.resampled and geometry.shape[0] == 6
    assert geometry.source_index == pytest.approx([0, 1, 2, 4, 5])
    slices = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    regular = regular_volume(slices, geometry)
    assert regular[:, 0, 0] == pytest.approx([0, 1, 2, 2.5, 3, 4])


def test_one_slice_is_no_volume() -> None:
    with pytest.raises(VolumeGeometryError, match="two or more slices, got 1"):
        stack_geometry(_stack(real_ct_stack(1)), 0.1)


@pytest.mark.parametrize("orientation", [AXIAL, oblique(25.0)])
def test_fast_and_general_resampling_agree(orientation: tuple[float, ...]) -> None:
    geometry = stack_geometry(_stack(real_ct_stack(10, orientation=orientation)), 0.1)
    grid = network_grid(geometry, GeometrySpec(orientation="RAS", spacing=(1.3, 1.1, 1.7)))
    volume = np.random.default_rng(0).random(geometry.shape, dtype=np.float32)
    fast = resample(volume, grid.to_volume, grid.shape, 1)
    skewed = grid.to_volume.copy()
    skewed[0, 1] += 1e-7  # no longer a permuted diagonal: the general path
    general = resample(volume, skewed, grid.shape, 1)
    assert np.abs(fast - general).max() < 1e-4


def test_source_grid_is_sized_by_shape_like_nnunet() -> None:
    geometry = stack_geometry(_stack(real_ct_stack(10, step_mm=3.0)), 0.1)
    grid = network_grid(
        geometry,
        GeometrySpec(orientation="source", transpose=(0, 2, 1), spacing=(2.0, 1.0, "keep")),
    )
    # (slices, columns, rows): 10 * 3 / 2 = 15, 128 * 0.66 / 1 = 85, rows kept.
    assert grid.shape == (15, 85, 128)
    assert grid.spacing == pytest.approx((2.0, 128 * 0.661468 / 85, 0.661468), rel=1e-4)


def test_intensity_formulas_match_the_references() -> None:
    monai = pytest.importorskip("monai.transforms")
    nnunet = pytest.importorskip(
        "nnunetv2.preprocessing.normalization.default_normalization_schemes"
    )
    values = np.random.default_rng(1).normal(0.0, 500.0, (4, 9, 9, 1)).astype(np.float32)
    values[0] = 0.0
    spec = IntensitySpec(method="scale_range", a_min=-800.0, a_max=600.0, b_min=-1.0, clip=True)
    reference = monai.ScaleIntensityRange(-800.0, 600.0, -1.0, 1.0, clip=True)(values)
    assert field_formula(values, spec) == pytest.approx(np.asarray(reference), abs=1e-5)
    for nonzero in (False, True):
        spec = IntensitySpec(method="normalize", nonzero=nonzero)
        reference = monai.NormalizeIntensity(nonzero=nonzero)(values)
        assert field_formula(values, spec) == pytest.approx(np.asarray(reference), abs=1e-4)
    spec = IntensitySpec(method="normalize", mean=10.0, std=20.0)
    reference = monai.NormalizeIntensity(subtrahend=10.0, divisor=20.0)(values)
    assert field_formula(values, spec) == pytest.approx(np.asarray(reference), abs=1e-5)
    properties = {"percentile_00_5": -700.0, "percentile_99_5": 900.0, "mean": 35.0, "std": 210.0}
    ct = nnunet.CTNormalization(use_mask_for_norm=False, intensityproperties=properties)
    reference = ct.run(values[..., 0].copy())
    spec = IntensitySpec(method="ct_normalization", lower=-700.0, upper=900.0, mean=35.0, std=210.0)
    assert field_formula(values, spec)[..., 0] == pytest.approx(reference, abs=1e-5)


def test_channel_mean_std_is_the_imagenet_formula() -> None:
    values = np.asarray([[[-1000.0, 0.0, 1000.0]]], dtype=np.float32).reshape(1, 3, 1)
    values = np.repeat(values, 3, axis=-1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = IntensitySpec(method="channel_mean_std", a_min=-1000.0, a_max=1000.0, mean=mean, std=std)
    unit = np.asarray([0.0, 0.5, 1.0])[:, None]
    expected = (unit - np.asarray(mean)) / np.asarray(std)
    assert field_formula(values, spec)[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("size", "patch", "overlap"), [(57, 16, 0.25), (50, 32, 0.5), (16, 16, 0.5)]
)
def test_window_starts_match_monai_and_nnunet(size: int, patch: int, overlap: float) -> None:
    monai_utils = pytest.importorskip("monai.data.utils")
    nnunet = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    interval = patch if patch == size else int(patch * (1 - overlap))
    slices = monai_utils.dense_patch_slices((size,), (patch,), (interval,))
    assert window_starts(size, patch, overlap) == [s[0].start for s in slices]
    steps = nnunet.compute_steps_for_sliding_window((size,), (patch,), 1 - overlap)[0]
    assert window_starts(size, patch, overlap, Placement.EVEN) == steps


def test_importance_map_matches_monai() -> None:
    torch = pytest.importorskip("torch")
    monai_utils = pytest.importorskip("monai.data.utils")
    for patch in ((16, 32, 32), (7, 9, 12)):
        reference = monai_utils.compute_importance_map(
            patch, "gaussian", 0.125, "cpu", torch.float32
        )
        assert importance_map(patch, Blending.GAUSSIAN, 0.125) == pytest.approx(
            reference.numpy(), rel=1e-5
        )


def test_importance_map_of_even_placement_matches_nnunet() -> None:
    """nnU-Net centres its Gaussian at n // 2 (half a voxel off MONAI's on even patches)."""
    torch = pytest.importorskip("torch")
    nnunet = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    cpu = torch.device("cpu")
    for patch in ((16, 32, 32), (7, 9, 12)):
        reference = nnunet.compute_gaussian(patch, 1.0 / 8, dtype=torch.float32, device=cpu)
        ours = importance_map(patch, Blending.GAUSSIAN, 1.0 / 8, Placement.EVEN)
        assert ours == pytest.approx(reference.numpy(), rel=1e-5)
    even = importance_map((16, 32, 32), Blending.GAUSSIAN, 1.0 / 8, Placement.EVEN)
    assert even.argmax() == np.ravel_multi_index((8, 16, 16), (16, 32, 32))
    assert not np.allclose(even, importance_map((16, 32, 32), Blending.GAUSSIAN, 1.0 / 8))


def test_ensemble_averages_logits_and_mirroring_averages_flips() -> None:
    batch = np.arange(2 * 1 * 2 * 3 * 4, dtype=np.float32).reshape(2, 1, 2, 3, 4)
    double = ensemble([lambda b: b * 1.0, lambda b: b * 3.0])
    assert double(batch) == pytest.approx(batch * 2.0)
    # A network that reads its left neighbour: mirroring averages it with the right one.
    shifted = mirrored(lambda b: np.roll(b, 1, axis=4), (2,))
    expected = (np.roll(batch, 1, axis=4) + np.roll(batch, -1, axis=4)) / 2
    assert shifted(batch) == pytest.approx(expected)


def _run(tmp_path: Path, datasets: list[object], geometry: str = GEOMETRY, window: str = WINDOW):  # type: ignore[no-untyped-def]
    toml_text = package_toml(geometry=geometry, window=window, intensity=SCALE_RANGE)
    package = write_package(tmp_path / "pkg", toml_text)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        return model.predict(datasets)  # type: ignore[arg-type]


def test_volume_smaller_than_a_patch_is_padded(tmp_path: Path) -> None:
    datasets = real_ct_stack(4, step_mm=2.0)  # 6 mm deep on a 2 mm grid: 4 of 16 slices
    prediction = _run(tmp_path, datasets, window='overlap = 0.25\npadding = "edge"')
    assert prediction.label_map is not None and prediction.label_map.shape == (4, 128, 128)
    assert (prediction.voxel_counts()[:, 0] > 1000).all()  # tissue on every slice


def test_two_stacks_run_the_largest_and_say_so(tmp_path: Path) -> None:
    big = real_ct_stack(12, step_mm=2.0)
    small = real_ct_stack(5, step_mm=2.0, orientation=oblique(40.0))
    for ds in small:
        ds.SeriesInstanceUID = big[0].SeriesInstanceUID
        ds.StudyInstanceUID = big[0].StudyInstanceUID
    prediction = _run(tmp_path, big + small)
    assert len(prediction.frames) == 12
    assert any("a segmentation covers one stack" in reason for reason in prediction.skipped)


def test_uneven_series_is_skipped_with_the_reason(tmp_path: Path) -> None:
    datasets = real_ct_stack(6, steps_mm=[2.0, 2.0, 6.0, 2.0, 2.0])
    with pytest.raises(UnsupportedSeriesError, match=r"uneven slice steps.*does not resample"):
        _run(tmp_path, datasets)


def test_uneven_series_is_resampled_when_the_package_allows(tmp_path: Path) -> None:
    datasets = real_ct_stack(6, steps_mm=[2.0, 2.0, 6.0, 2.0, 2.0])
    prediction = _run(tmp_path, datasets, geometry=GEOMETRY + "\nresample_uneven = true")
    assert prediction.label_map is not None and prediction.label_map.shape[0] == 6
    assert (prediction.voxel_counts()[:, 0] > 1000).all()


def _two_folds(tmp_path: Path) -> Path:
    """A package of two ONNX folds (differently seeded heads)."""
    toml_text = package_toml(
        geometry=GEOMETRY,
        window=WINDOW,
        intensity=SCALE_RANGE,
        networks=("fold_0.onnx", "fold_1.onnx"),
    )
    return write_package(tmp_path / "pkg", toml_text, seeds=(0, 3))


def test_ensemble_package_loads_every_fold(tmp_path: Path) -> None:
    package = _two_folds(tmp_path)
    datasets = real_ct_stack(8)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        assert len(model._ensemble) == 1
        assert model.predict(datasets).label_map is not None  # type: ignore[union-attr]
    (package / "fold_1.onnx").unlink()
    with pytest.raises(ModelPackageError, match=r"fold_1\.onnx: runtime\.networks: file not found"):
        validate_package(package)


def test_crop_to_the_foreground_keeps_the_result_and_the_rest_is_background(
    tmp_path: Path,
) -> None:
    datasets = real_ct_stack(16, step_mm=2.0)
    full = _run(tmp_path / "full", datasets)
    cropped_geometry = GEOMETRY + "\ncrop_foreground = true\ncrop_threshold = 0.45\ncrop_margin = 2"
    cropped = _run(tmp_path / "crop", datasets, geometry=cropped_geometry)
    assert full.label_map is not None and cropped.label_map is not None
    for label in (1, 2):
        a, b = full.label_map == label, cropped.label_map == label
        assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) >= 0.99
    # Far outside the body (the image corners) the cropped run reads background.
    assert (cropped.label_map[:, :4, :4] == 0).all()


def test_foreground_box_is_monai_s_with_its_margin() -> None:
    image = np.zeros((1, 20, 30, 40), dtype=np.float32)
    image[0, 5:8, 10:12, 30:35] = 1.0
    spec = GeometrySpec(crop_foreground=True, crop_threshold=0.5, crop_margin=3)
    box = foreground(image, spec)
    assert (box.start, box.stop) == ((2, 7, 27), (11, 15, 38))
    assert foreground(image, GeometrySpec()).stop == (20, 30, 40)  # no crop asked for
    assert foreground(np.zeros_like(image), spec).stop == (20, 30, 40)  # nothing above


def test_an_ensemble_does_not_run_on_the_torch_backend(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    package = _two_folds(tmp_path)
    example = torch.zeros(1, 1, 32, 32, 16)
    program = torch.export.export(torch_network(), (example,))
    torch.export.save(program, str(package / "model.pt2"))
    with pytest.raises(BackendUnavailableError, match=r"ensemble.*onnxruntime or tensorrt"):
        load_model(package, backend="torch", device="cpu")
