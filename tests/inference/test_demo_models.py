"""The shipped demo models, run through the whole pipeline on real and synthetic DICOM.

The CT model must agree with the HU-threshold truth on pydicom's real CT images
(which proves windowing, resizing and mapping back), and the radiograph classifier's
CAM must peak on the lesion it keys on.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from inference import Classification, Model, Segmentation, load_model, validate_package
from tests.conftest import REPO_ROOT
from tests.inference.conftest import DEMO_3D
from tests.inference.dicom_factory import radiograph_dataset, read_testdata
from tests.inference.volume_data import real_ct_stack

BONE_HU = 300.0


@functools.cache
def _builder() -> ModuleType:
    """The build script, for its radiograph generator (it imports torch only to train)."""
    name = "build_demo_models"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "models" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load models/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KI.dcm", "693_J2KR.dcm"])
def test_ct_bone_agrees_with_the_hu_threshold(ct_model: Model, name: str) -> None:
    ds = read_testdata(name)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    truth = hu >= BONE_HU
    prediction = ct_model.predict([ds])
    assert isinstance(prediction, Segmentation)
    assert prediction.frames[0].sop_instance_uid == ds.SOPInstanceUID
    assert prediction.masks.shape == (1, ds.Rows, ds.Columns, 1)
    assert prediction.pixel_spacing_mm == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert prediction.slice_spacing_mm == pytest.approx(float(ds.SliceThickness))
    assert prediction.model.not_for_clinical_use
    assert _dice(prediction.masks[0, ..., 0], truth) >= 0.9


def test_ct_bone_on_a_series_of_slices(ct_model: Model) -> None:
    """Two stacks of one series: the largest runs, the other is reported."""
    small = read_testdata("CT_small.dcm")
    big = read_testdata("693_J2KI.dcm")
    big.SeriesInstanceUID = small.SeriesInstanceUID
    prediction = ct_model.predict([small, big])
    assert isinstance(prediction, Segmentation)
    assert len(prediction.frames) == 1 and len(prediction.skipped) == 1
    assert "a segmentation covers one stack" in prediction.skipped[0]


def _lesion_mask(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    r, c = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.asarray((r - row) ** 2 + (c - col) ** 2 <= radius**2)


def test_cam_peaks_on_the_nodule(cr_model: Model) -> None:
    builder = _builder()
    rng = np.random.default_rng(2024)  # not a training seed
    found = 0
    for _ in range(10):
        rows, cols = int(rng.integers(200, 360)), int(rng.integers(180, 360))
        image, lesions = builder.radiograph(rng, rows, cols, nodule=True, mass=False)
        ((_, row, col, radius),) = lesions
        ds = radiograph_dataset(image)
        prediction = cr_model.predict([ds])
        assert isinstance(prediction, Classification)
        nodule = next(s for s in prediction.scores if s.label.name == "nodule")
        if not nodule.positive:
            continue
        found += 1
        heatmap = next(h for h in prediction.heatmaps if h.label.name == "nodule")
        assert heatmap.values.shape == (rows, cols)
        assert heatmap.frame.sop_instance_uid == ds.SOPInstanceUID
        peak = np.unravel_index(np.argmax(heatmap.values), heatmap.values.shape)
        # Within the lesion, give or take one cell of the 16 x 16 feature map.
        cell = max(rows, cols) / 16
        assert np.hypot(peak[0] - row, peak[1] - col) <= radius + cell
        inside = _lesion_mask((rows, cols), row, col, radius)
        assert heatmap.values[inside].mean() > 3 * heatmap.values[~inside].mean()
    assert found >= 7  # the demo finds most nodules; every one it finds, the CAM shows


def test_classifier_decisions_on_clear_cases(cr_model: Model) -> None:
    builder = _builder()
    rng = np.random.default_rng(77)
    results = []
    for nodule, mass in [(False, False), (True, False), (False, True)] * 3:
        image, _ = builder.radiograph(rng, 280, 240, nodule=nodule, mass=mass)
        prediction = cr_model.predict([radiograph_dataset(image)])
        assert isinstance(prediction, Classification)
        decided = {s.label.name: s.positive for s in prediction.scores}
        results.append(decided == {"nodule": nodule, "mass": mass})
        assert {h.label.name for h in prediction.heatmaps} == {n for n, p in decided.items() if p}
    assert sum(results) >= 8


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="building needs PyTorch")
def test_build_script_writes_the_shipped_ct_package(tmp_path: Path) -> None:
    """A tiny run of the CT build: the package validates and says what it is, and only it
    is written (the classifier is built through the fine-tuning path, by
    models/build_demo_classifier.py: this script must never overwrite it)."""
    package = _builder().build(tmp_path, scale=0.01)
    assert package == tmp_path / "demo-ct-bone"
    spec = validate_package(package)
    assert spec.spec.model.name == "demo-ct-bone" and spec.torch_path is not None
    assert [p.name for p in tmp_path.iterdir()] == ["demo-ct-bone"]
    shipped = (REPO_ROOT / "models" / "demo-ct-bone" / "model.toml").read_text()
    assert (package / "model.toml").read_text() == shipped
    with pytest.raises(SystemExit, match="2"):  # --only cr is retired
        _builder().main(["--out", str(tmp_path), "--only", "cr"])


def test_3d_demo_finds_body_and_bone_on_real_ct() -> None:
    package = validate_package(DEMO_3D)
    window = package.spec.input.window
    assert window is not None and window.patch == (64, 64, 64)
    datasets = real_ct_stack(12, template="693_UNCI.dcm", step_mm=3.0)
    with load_model(DEMO_3D, backend="onnxruntime", device="cpu") as model:
        prediction = model.predict(datasets)
    assert isinstance(prediction, Segmentation) and prediction.label_map is not None
    counts = prediction.voxel_counts().sum(axis=0)
    names = [label.name for label in prediction.labels]
    assert names == ["body", "lung", "bone"]
    # The real slice is an abdomen-level CT: mostly body, some bone.
    assert counts[0] > 0.2 * prediction.label_map.size and counts[2] > 1000
    assert prediction.model.not_for_clinical_use
