"""A MONAI bundle folder to a package: a valid package with its origin, or a clear error."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from inference import validate_package
from inference.importers import ImportModelError, ImportOptions, import_monai_bundle
from tests.importers.sources import (
    BUNDLE_NETWORK,
    INFERENCE_JSON,
    METADATA_JSON,
    bundle_weights,
    write_bundle,
)

pytestmark = pytest.mark.slow  # trains the test network once per session (seconds)


def edited(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of a config with the value at ``a::b::0`` replaced (None: deleted)."""
    copied = copy.deepcopy(document)
    *parents, last = path.split("::")
    node: Any = copied
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return copied


def test_bundle_becomes_a_valid_package_with_origin_licence_and_notes(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "spleenish_ct")
    result = import_monai_bundle(bundle, tmp_path / "pkg")
    spec = result.package.spec
    assert (spec.model.name, spec.model.version) == ("spleenish_ct", "0.3.1")
    assert spec.input.modalities == ("CT",) and spec.input.size == (32, 32, 16)
    geometry, window = spec.input.geometry, spec.input.window
    assert geometry is not None and window is not None
    assert (geometry.orientation, geometry.spacing) == ("RAS", (1.5, 1.5, 2.0))
    assert (window.patch, window.overlap, window.batch) == ((32, 32, 16), 0.25, 4)
    assert spec.input.intensity.method == "scale_range" and spec.input.intensity.clip
    assert (spec.output.activation, spec.output.interpolate) == ("softmax", "probabilities")
    assert [label.name for label in spec.output.labels] == ["soft_tissue", "bone"]
    assert result.generic_labels == ("soft_tissue", "bone")
    assert spec.output.labels[1].finding.scheme == "99DCMNODE"
    origin = spec.origin
    assert origin is not None and (origin.kind, origin.version) == ("monai-bundle", "0.3.1")
    assert origin.license_file == "LICENSE"
    assert (tmp_path / "pkg" / "LICENSE").read_text().startswith("Test licence")
    assert result.parity["model.onnx"] < 1e-3
    notes = " ".join(result.notes)
    assert "LoadImaged" in notes and "Invertd" in notes and "SaveImaged" in notes
    assert not (tmp_path / ".pkg.importing").exists()
    assert validate_package(tmp_path / "pkg").networks == (tmp_path / "pkg" / "model.onnx",)


def test_labels_file_codes_labels_and_a_typo_in_it_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    labels = tmp_path / "labels.toml"
    labels.write_text(
        "[[labels]]\n"
        'name = "bone"\n'
        'finding = { value = "272673000", scheme = "SCT", meaning = "Bone" }\n'
        'category = { value = "123037004", scheme = "SCT", meaning = "Anatomical Structure" }\n'
    )
    result = import_monai_bundle(bundle, tmp_path / "pkg", ImportOptions(labels_file=labels))
    bone = result.package.spec.output.labels[1]
    assert (bone.finding.value, bone.finding.scheme, bone.category.meaning) == (
        "272673000",
        "SCT",
        "Anatomical Structure",
    )
    assert result.generic_labels == ("soft_tissue",)
    labels.write_text(labels.read_text().replace('"bone"', '"bones"'))
    with pytest.raises(ImportModelError, match=r"labels\.toml: labels\.name: \['bones'\] not"):
        import_monai_bundle(bundle, tmp_path / "pkg2", ImportOptions(labels_file=labels))
    labels.write_text("[[labels]]\nname = 'bone'\n")
    with pytest.raises(ImportModelError, match=r"labels\.toml: labels\.0\.finding: Field required"):
        import_monai_bundle(bundle, tmp_path / "pkg3", ImportOptions(labels_file=labels))


def test_torchscript_bundle_imports_and_existing_package_needs_overwrite(tmp_path: Path) -> None:
    from monai.networks.nets import UNet

    bundle = write_bundle(tmp_path / "bundle")
    network = UNet(**{k: v for k, v in BUNDLE_NETWORK.items() if k != "_target_"})
    network.load_state_dict(bundle_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still shipped
        traced = torch.jit.trace(network.eval(), torch.zeros(1, 1, 32, 32, 16))
    traced.save(str(bundle / "models" / "model.ts"))
    (bundle / "models" / "model.pt").unlink()
    result = import_monai_bundle(bundle, tmp_path / "pkg")
    assert result.parity["model.onnx"] < 1e-3
    assert "model.ts" in (result.package.spec.origin.source if result.package.spec.origin else "")
    with pytest.raises(FileExistsError, match=r"package folder exists: .*pkg \(replace it"):
        import_monai_bundle(bundle, tmp_path / "pkg")
    import_monai_bundle(bundle, tmp_path / "pkg", ImportOptions(version="2", overwrite=True))
    assert validate_package(tmp_path / "pkg").spec.model.version == "2"


@pytest.mark.parametrize(
    ("inference", "metadata", "match"),
    [
        (
            edited(INFERENCE_JSON, "preprocessing::transforms::4::_target_", "GaussianSmoothd"),
            None,
            r"configs/inference\.json: preprocessing::transforms::4: MONAI cannot instantiate",
        ),
        (
            edited(
                INFERENCE_JSON,
                "preprocessing::transforms::5",
                {"_target_": "RandGaussianNoised", "keys": "image", "prob": 1.0},
            ),
            None,
            r"configs/inference\.json: preprocessing::transforms::5: RandGaussianNoised has no "
            r"equivalent",
        ),
        (
            edited(INFERENCE_JSON, "inferer", {"_target_": "SimpleInferer"}),
            None,
            r"configs/inference\.json: inferer: SimpleInferer: only SlidingWindowInferer",
        ),
        (
            edited(INFERENCE_JSON, "postprocessing", None),
            None,
            r"configs/inference\.json: postprocessing: missing",
        ),
        (
            None,
            edited(
                METADATA_JSON,
                "network_data_format::outputs::pred::channel_def",
                {"0": "background", "1": "soft_tissue"},
            ),
            r"configs/metadata\.json: network_data_format\.outputs\.pred\.channel_def: .* does "
            r"not name channels 0\.\.2",
        ),
        (
            None,
            edited(METADATA_JSON, "network_data_format::inputs::image::modality", None),
            r"network_data_format\.inputs\.image\.modality: missing: give the DICOM modality",
        ),
        (
            None,
            edited(METADATA_JSON, "network_data_format::inputs::image::num_channels", 2),
            r"network_data_format\.inputs\.image\.num_channels: 2: the node feeds one series",
        ),
    ],
)
def test_a_bundle_that_does_not_map_names_file_and_key(
    tmp_path: Path, inference: dict[str, Any] | None, metadata: dict[str, Any] | None, match: str
) -> None:
    bundle = write_bundle(tmp_path / "bundle", inference, metadata, weights={})
    with pytest.raises(ImportModelError, match=match):
        import_monai_bundle(bundle, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_missing_files_are_named(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", weights={})
    (bundle / "configs" / "inference.json").unlink()
    with pytest.raises(ImportModelError, match=r"bundle: -: no configs/inference\.json or "):
        import_monai_bundle(bundle, tmp_path / "pkg")
    (bundle / "configs" / "metadata.json").unlink()
    with pytest.raises(ImportModelError, match=r"configs/metadata\.json: -: file not found"):
        import_monai_bundle(bundle, tmp_path / "pkg")
    bundle = write_bundle(tmp_path / "weightless", weights={})
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ImportModelError, match=r"network_def: needs models/model\.pt with netw"):
        import_monai_bundle(bundle, tmp_path / "pkg")


def test_labels_that_do_not_match_the_network_are_refused(tmp_path: Path) -> None:
    metadata = edited(METADATA_JSON, "network_data_format::outputs::pred::num_channels", 4)
    metadata = edited(
        metadata,
        "network_data_format::outputs::pred::channel_def",
        {"0": "background", "1": "soft_tissue", "2": "bone", "3": "metal"},
    )
    bundle = write_bundle(tmp_path / "bundle", metadata=metadata)
    with pytest.raises(
        ImportModelError,
        match=r"metadata\.json: network_data_format\.outputs\.pred\.num_channels: 4, but the "
        r"network outputs 3 channels",
    ):
        import_monai_bundle(bundle, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists() and not (tmp_path / ".pkg.importing").exists()


def test_weights_that_do_not_fit_or_hold_objects_are_refused(tmp_path: Path) -> None:
    wrong = edited(INFERENCE_JSON, "network_def::channels", [4, 8])
    bundle = write_bundle(tmp_path / "bundle", inference=wrong)
    with pytest.raises(ImportModelError, match=r"model\.pt: network_def: the weights do not fit"):
        import_monai_bundle(bundle, tmp_path / "pkg")
    bundle = write_bundle(tmp_path / "pickled")
    torch.save({"model": bundle_weights(), "note": Path("x")}, bundle / "models" / "model.pt")
    with pytest.raises(
        ImportModelError, match=r"model\.pt: -: holds Python objects .*--allow-pick"
    ):
        import_monai_bundle(bundle, tmp_path / "pkg")
    result = import_monai_bundle(bundle, tmp_path / "pkg", ImportOptions(allow_pickle=True))
    assert result.parity["model.onnx"] < 1e-3


def test_a_network_that_does_not_export_is_refused(tmp_path: Path) -> None:
    inference = edited(
        INFERENCE_JSON, "network_def", {"_target_": "tests.importers.sources.FourierNet"}
    )
    bundle = write_bundle(tmp_path / "bundle", inference=inference)
    from tests.importers.sources import FourierNet

    torch.save(FourierNet().state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(
        ImportModelError, match=r"model\.pt: network: FourierNet does not export to ONNX: .*fft"
    ):
        import_monai_bundle(bundle, tmp_path / "pkg")


def test_yaml_config_is_read_by_monai(tmp_path: Path) -> None:
    import yaml

    bundle = write_bundle(tmp_path / "bundle")
    config = bundle / "configs" / "inference.json"
    (bundle / "configs" / "inference.yaml").write_text(
        yaml.safe_dump(json.loads(config.read_text()))
    )
    config.unlink()
    result = import_monai_bundle(bundle, tmp_path / "pkg")
    assert "inference.yaml" in (
        result.package.spec.origin.source if result.package.spec.origin else ""
    )


def test_the_card_says_what_the_bundle_metadata_says(tmp_path: Path) -> None:
    metadata = {
        **METADATA_JSON,
        "authors": ["A. Author", "B. Author"],
        "data_source": "16 generated CT phantoms",
        "references": ["Test et al., 2026"],
        "eval_metrics": {"mean_dice": 0.91},
    }
    bundle = write_bundle(tmp_path / "spleenish_ct", metadata=metadata)
    card = import_monai_bundle(bundle, tmp_path / "pkg").package.card
    assert card is not None and (card.model, card.version) == ("spleenish_ct", "0.3.1")
    assert card.intended_use == "Tests only, not for clinical use."
    origin = card.origin
    assert origin is not None and origin.kind == "monai-bundle"
    assert origin.authors == ["A. Author", "B. Author"]
    assert (origin.data_source, origin.references) == (
        "16 generated CT phantoms",
        ["Test et al., 2026"],
    )
    assert origin.stated_metrics == {"mean_dice": 0.91}
    text = (tmp_path / "pkg" / "model_card.md").read_text(encoding="utf-8")
    assert "Stated by its authors, not measured here: mean_dice 0.91" in text
