"""``dicom-node evaluate`` on a segmentation package: the node's masks against SEG truth.

The demo bone model segments a 1000 HU box exactly (checked here through the node's
own ``predict``), so truth written as that box, or as the box less one slice, gives
Dice figures known in advance; HD95 is checked against MONAI on the same masks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference import ModelPackageError, Segmentation, load_model
from inference.finetune import evaluate_package
from inference.model_card import ModelCard
from inference.model_card_files import write_card
from tests.conftest import run_cli
from tests.finetune.ct_with_seg import PIXEL_MM, SLICE_MM, SyntheticSeries, write_seg, write_series
from tests.orchestration.studies import MODELS

pytestmark = pytest.mark.slow  # runs the demo package on 14 small CT series

BONE_PACKAGE = MODELS / "demo-ct-bone"
CASES = 12
VENDORS = ("VendorA", "VendorB", "VendorC")


def _truth(series: SyntheticSeries, index: int) -> np.ndarray:
    """Every fourth case's reader left out the box's first slice; the others drew it all."""
    truth = series.box.copy()
    if index % 4 == 0:
        first = int(np.flatnonzero(truth.any(axis=(1, 2)))[0])
        truth[first] = False
    return truth


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """12 annotated series, one SEG of another structure, one series without a SEG."""
    folder = tmp_path_factory.mktemp("ct-seg")
    (folder / "segs").mkdir()
    rng = np.random.default_rng(5)
    written = []
    for i in range(CASES + 2):
        header = {
            "PatientID": f"P{i:02d}",
            "PatientSex": "FM"[i % 2],
            "PatientAge": "030Y" if i < 6 else "070Y",
            "Manufacturer": VENDORS[i % 3],
            "StudyDate": f"202403{i + 1:02d}",
        }
        series = write_series(folder, rng, header)
        if i < CASES:
            truth = _truth(series, i)
            write_seg(folder / "segs" / f"{i:02d}.dcm", series.datasets, truth)
            written.append((series, truth))
        elif i == CASES:
            write_seg(folder / "segs" / "other.dcm", series.datasets, series.box, label="lesion")
    return folder, written


@pytest.fixture(scope="module")
def results(labelled: tuple[Path, list[Any]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder, _ = labelled
    out = tmp_path_factory.mktemp("report")
    evaluate_package(BONE_PACKAGE, folder, None, out, backend="onnxruntime", progress=False)
    return json.loads((out / "results.json").read_text(encoding="utf-8")), out


def test_the_node_predicts_the_box_exactly(labelled: tuple[Path, list[Any]]) -> None:
    _, written = labelled
    series, _ = written[1]
    with load_model(BONE_PACKAGE, "onnxruntime") as model:
        prediction = model.predict(series.datasets)
    assert isinstance(prediction, Segmentation)
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(series.datasets)}
    order = [by_uid[f.sop_instance_uid] for f in prediction.frames]
    assert np.array_equal(prediction.mask(0), series.box[order])


def test_dice_per_case_is_exact(labelled: tuple[Path, list[Any]], results: Any) -> None:
    _, written = labelled
    found, _ = results
    by_case = {row["case"]: row["labels"]["high-attenuation structure"] for row in found["cases"]}
    assert len(by_case) == CASES
    for series, truth in written:
        box = series.box
        expected = 2 * truth.sum() / (truth.sum() + box.sum())
        row = by_case[series.datasets[0].SeriesInstanceUID]
        assert row["dice"] == pytest.approx(expected, abs=1e-6)
        voxel_ml = PIXEL_MM[0] * PIXEL_MM[1] * SLICE_MM / 1000
        assert row["truth_ml"] == pytest.approx(truth.sum() * voxel_ml, abs=1e-6)
        assert row["predicted_ml"] == pytest.approx(box.sum() * voxel_ml, abs=1e-6)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
def test_hd95_in_mm_matches_monai(labelled: tuple[Path, list[Any]], results: Any) -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    _, written = labelled
    found, _ = results
    by_case = {row["case"]: row["labels"]["high-attenuation structure"] for row in found["cases"]}
    for series, truth in written[:4]:  # case 0 has a slice missing; 1-3 are exact
        theirs = monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(series.box[None, None]),
            torch.from_numpy(truth[None, None]),
            include_background=True,
            percentile=95,
            spacing=(SLICE_MM, *PIXEL_MM),
        ).item()
        row = by_case[series.datasets[0].SeriesInstanceUID]
        assert row["hausdorff95"] == pytest.approx(theirs, abs=1e-5)
    assert by_case[written[0][0].datasets[0].SeriesInstanceUID]["hausdorff95"] > 0


def test_means_intervals_subgroups_and_skipped(results: Any) -> None:
    found, out = results
    (label,) = found["labels"]
    pooled = label["pooled"]
    assert pooled["n"] == CASES and pooled["hausdorff_unit"] == "mm"
    low, high = pooled["dice_ci95"]
    assert low < pooled["dice_mean"] < 1.0 and high <= 1.0
    vendors = {g["group"]: g["n"] for g in pooled["subgroups"] if g["attribute"] == "manufacturer"}
    assert vendors == dict.fromkeys(VENDORS, CASES // 3)
    exact = [g for g in pooled["subgroups"] if g["attribute"] == "age_band"]
    assert {g["group"] for g in exact} == {"18-39", "65+"}
    # The "lesion" SEG and its series (nothing of the package's labels), the bare series.
    assert found["run"]["skipped"]["no_label"] == 3
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Per case" in text and "| manufacturer | VendorB | 4 |" in text
    assert "Dice mean (95% CI)" in text and "| pooled |" not in text


def test_cli_card_and_models_card(labelled: tuple[Path, list[Any]], tmp_path: Path) -> None:
    folder, _ = labelled
    package = tmp_path / "demo-ct-bone"
    shutil.copytree(BONE_PACKAGE, package)
    done = run_cli(
        "evaluate",
        *("--model", package, "--data", folder, "--labels", folder / "segs"),
        *("--out", tmp_path / "out", "--backend", "onnxruntime", "--no-progress", "--card"),
    )
    assert done.returncode == 0, done.stderr
    assert f"{CASES} case(s) evaluated, skipped: no_label 3" in done.stdout
    card = json.loads((package / "model_card.json").read_text(encoding="utf-8"))
    (entry,) = card["external_validations"]
    assert entry["cases"] == CASES and entry["labels"][0]["dice_mean"] < 1.0
    config = tmp_path / "node.toml"
    config.write_text(
        f'[drift]\npsi_threshold = 0.3\n[[models]]\nname = "bone"\npath = "{package}"\n'
    )
    shown = run_cli("models", "-c", config, "--card", "bone")
    assert shown.returncode == 0, shown.stderr
    assert "### External validation:" in shown.stdout and "| high-attenuation structure | 12 |" in (
        shown.stdout
    )
    assert "reaches 0.30" in shown.stdout and f"[drift] of {config}" in shown.stdout


def test_a_card_of_another_version_is_not_extended(
    labelled: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    folder, _ = labelled
    package = tmp_path / "demo-ct-bone"
    shutil.copytree(BONE_PACKAGE, package)
    write_card(package, ModelCard(model="demo-ct-bone", version="0.9.0"))
    with pytest.raises(ModelPackageError, match=r"describes demo-ct-bone 0.9.0.*up to date"):
        evaluate_package(package, folder, None, tmp_path / "out", progress=False, card=True)
    assert not (tmp_path / "out").exists()  # refused before any work


def _nifti(path: Path, truth: np.ndarray, flipped: bool) -> None:
    """Write ``truth`` (slices, rows, columns) as dcm2niix would: axes (column, row,
    slice), RAS affine; ``flipped`` also reverses the column axis."""
    nibabel = pytest.importorskip("nibabel")
    data = truth.transpose(2, 1, 0).astype(np.uint8)
    affine = np.diag([-PIXEL_MM[1], -PIXEL_MM[0], SLICE_MM, 1.0])
    if flipped:
        data = data[::-1]
        affine[0, 0], affine[0, 3] = PIXEL_MM[1], -PIXEL_MM[1] * (data.shape[0] - 1)
    nibabel.save(nibabel.Nifti1Image(data, affine), path)


def test_nifti_label_maps_are_placed_by_their_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    (tmp_path / "dicom").mkdir()
    (tmp_path / "labels").mkdir()
    expected = {}
    for i in range(3):
        series = write_series(tmp_path / "dicom", rng, {"PatientID": f"N{i}"})
        truth = _truth(series, 0)  # the box less its first slice
        uid = series.datasets[0].SeriesInstanceUID
        _nifti(tmp_path / "labels" / f"{uid}.nii.gz", truth, flipped=i == 1)
        expected[uid] = 2 * truth.sum() / (truth.sum() + series.box.sum())
    out = tmp_path / "out"
    evaluate_package(BONE_PACKAGE, tmp_path / "dicom", tmp_path / "labels", out, progress=False)
    found = json.loads((out / "results.json").read_text(encoding="utf-8"))
    dices = {
        row["case"]: row["labels"]["high-attenuation structure"]["dice"] for row in found["cases"]
    }
    assert dices == pytest.approx(expected, abs=1e-6)
