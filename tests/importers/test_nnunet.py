"""An nnU-Net v2 result folder to a package: folds, plans, labels, or a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.importers import ImportModelError, ImportOptions, import_nnunet
from tests.importers.sources import DATASET_JSON, plans_json, write_nnunet_result

pytestmark = pytest.mark.slow  # trains the test network once per session (seconds)


def test_result_becomes_a_package_whose_folds_the_node_ensembles(tmp_path: Path) -> None:
    write_nnunet_result(tmp_path / "results")
    result = import_nnunet(
        tmp_path / "results" / "Dataset990_Phantom",  # the dataset folder: one trainer in it
        tmp_path / "pkg",
        configuration="3d_fullres",
        folds=("0", "1"),
        mirror=True,
    )
    spec = result.package.spec
    assert spec.model.name == "Dataset990_Phantom-3d_fullres"
    assert spec.model.version.startswith("sha-") and len(spec.model.version) == 16
    assert spec.runtime.networks == ("fold_0.onnx", "fold_1.onnx")
    assert set(result.parity) == {"fold_0.onnx", "fold_1.onnx"}
    assert max(result.parity.values()) < 1e-3
    geometry, window = spec.input.geometry, spec.input.window
    assert geometry is not None and window is not None
    assert (geometry.orientation, geometry.transpose) == ("source", (0, 1, 2))
    assert (geometry.spacing, geometry.interpolation) == ((2.5, 1.5, 1.5), 3)
    assert (window.patch, window.overlap, window.sigma_scale) == ((16, 32, 32), 0.5, 0.125)
    assert (window.mirror_axes, window.placement) == ((0, 1, 2), "even")
    assert spec.output.interpolate == "logits"  # nnU-Net resamples logits, then softmax
    intensity = spec.input.intensity
    assert (intensity.method, intensity.lower, intensity.upper) == ("ct_normalization", -900, 1200)
    assert (intensity.mean, intensity.std) == (100.0, 300.0)
    assert [label.name for label in spec.output.labels] == ["soft_tissue", "bone"]
    assert spec.input.modalities == ("CT",)
    origin = spec.origin
    assert origin is not None and origin.kind == "nnunet"
    assert "configuration 3d_fullres folds 0, 1" in origin.source
    assert (tmp_path / "pkg" / "LICENSE").read_text() == "CC-BY 4.0 (test data)"


def test_without_mirror_the_package_does_not_mirror(tmp_path: Path) -> None:
    folder = write_nnunet_result(tmp_path / "results", folds=(0,))
    result = import_nnunet(folder, tmp_path / "pkg", configuration="3d_fullres", folds=("0",))
    window = result.package.spec.input.window
    assert window is not None and window.mirror_axes == ()


def test_the_result_folder_must_name_one_trainer(tmp_path: Path) -> None:
    folder = write_nnunet_result(tmp_path / "results", folds=(0,))
    (folder.parent / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres").mkdir()
    (folder.parent / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres" / "plans.json").touch()
    with pytest.raises(ImportModelError, match=r"Dataset990_Phantom: -: needs plans\.json here or"):
        import_nnunet(folder.parent, tmp_path / "pkg", configuration="3d_fullres", folds=("0",))
    with pytest.raises(ImportModelError, match=r"fold_3/checkpoint_final\.pth: -: file not found"):
        import_nnunet(folder, tmp_path / "pkg", configuration="3d_fullres", folds=("3",))


def plans_with(configuration: dict[str, Any]) -> dict[str, Any]:
    plans = plans_json()
    plans["configurations"]["3d_fullres"] |= configuration
    return plans


@pytest.mark.parametrize(
    ("plans", "dataset", "configuration", "match"),
    [
        (None, None, "3d_lowres", r"plans\.json: configurations\.3d_lowres: .*not found in plans"),
        (
            plans_with({"patch_size": [32, 32]}),
            None,
            "3d_fullres",
            r"plans\.json: configurations\.3d_fullres\.patch_size: \[32, 32\]: not a 3D model",
        ),
        (
            plans_with({"normalization_schemes": ["RescaleTo01Normalization"]}),
            None,
            "3d_fullres",
            r"plans\.json: configurations\.3d_fullres\.normalization_schemes: "
            r"RescaleTo01Normalization .* has no equivalent",
        ),
        (
            None,
            DATASET_JSON | {"labels": {"background": 0, "organ": [1, 2], "bone": 2}},
            "3d_fullres",
            r"dataset\.json: labels: region-based training",
        ),
        (
            None,
            DATASET_JSON | {"channel_names": {"0": "CT", "1": "PET"}},
            "3d_fullres",
            r"dataset\.json: channel_names: .*: the node feeds one",
        ),
        (
            None,
            DATASET_JSON | {"channel_names": {"0": "noise"}},
            "3d_fullres",
            None,  # CT normalisation says CT: accepted
        ),
    ],
)
def test_plans_and_datasets_that_do_not_map_name_file_and_key(
    tmp_path: Path,
    plans: dict[str, Any] | None,
    dataset: dict[str, Any] | None,
    configuration: str,
    match: str | None,
) -> None:
    folder = write_nnunet_result(tmp_path / "results", folds=(0,), plans=plans, dataset=dataset)
    if match is None:
        import_nnunet(folder, tmp_path / "pkg", configuration=configuration, folds=("0",))
        return
    with pytest.raises(ImportModelError, match=match):
        import_nnunet(folder, tmp_path / "pkg", configuration=configuration, folds=("0",))
    assert not (tmp_path / "pkg").exists()


def test_labels_that_do_not_match_the_output_channels_are_refused(tmp_path: Path) -> None:
    dataset = DATASET_JSON | {"labels": {"background": 0, "soft_tissue": 1, "bone": 2, "metal": 3}}
    folder = write_nnunet_result(tmp_path / "results", folds=(0,), dataset=dataset)
    with pytest.raises(
        ImportModelError,
        match=r"checkpoint_final\.pth: network_weights: do not fit .*PlainConvUNet with 4 output "
        r"channels \(background and the 3 labels of dataset\.json\)",
    ):
        import_nnunet(folder, tmp_path / "pkg", configuration="3d_fullres", folds=("0",))


def test_a_checkpoint_holding_objects_needs_allow_pickle(tmp_path: Path) -> None:
    folder = write_nnunet_result(tmp_path / "results", folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    torch.save(checkpoint | {"trainer": Path("anything")}, path)
    with pytest.raises(ImportModelError, match=r"checkpoint_final\.pth: -: holds Python objects"):
        import_nnunet(folder, tmp_path / "pkg", configuration="3d_fullres", folds=("0",))
    result = import_nnunet(
        folder,
        tmp_path / "pkg",
        configuration="3d_fullres",
        folds=("0",),
        options=ImportOptions(allow_pickle=True),
    )
    assert result.parity["fold_0.onnx"] < 1e-3


def test_the_card_holds_the_dataset_and_nnunet_cross_validation(tmp_path: Path) -> None:
    folder = write_nnunet_result(tmp_path / "results", folds=(0,))
    summary = {
        "foreground_mean": {"Dice": 0.8},
        "mean": {"1": {"Dice": 0.9}, "2": {"Dice": 0.7}},
        "metric_per_case": [{}, {}, {}],
    }
    (folder / "fold_0" / "validation").mkdir()
    (folder / "fold_0" / "validation" / "summary.json").write_text(json.dumps(summary))
    result = import_nnunet(folder, tmp_path / "pkg", configuration="3d_fullres", folds=("0",))
    card = result.package.card
    assert card is not None and card.version == result.package.spec.model.version
    assert card.origin is not None and card.origin.license == "CC-BY 4.0 (test data)"
    assert card.training_data is not None and card.training_data.cases == 16
    internal = card.internal_validation
    assert internal is not None and internal.cases == 3
    assert internal.labels == [
        {"label": "soft_tissue", "dice_mean": 0.9},
        {"label": "bone", "dice_mean": 0.7},
    ]
    assert result.package.identity.model_card == f"{card.model} {card.version}"
