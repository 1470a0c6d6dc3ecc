"""A broken model package fails at load time, naming the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference import ModelPackageError, Task, load_model, validate_package
from tests.inference.conftest import DEMO_3D, DEMO_CR, DEMO_CT
from tests.inference.graphs import (
    CLASSIFIER_TOML,
    DETECTOR_TOML,
    bright_classifier_graph,
    fixed_box_graph,
    segmenter_package,
    threshold_graph,
    write_package,
)


def _classifier(folder: Path, toml_text: str = CLASSIFIER_TOML) -> Path:
    write_package(folder, toml_text)
    bright_classifier_graph(folder / "model.onnx")
    return folder


@pytest.mark.parametrize("package", [DEMO_CT, DEMO_CR, DEMO_3D])
def test_demo_packages_validate_and_say_not_for_clinical_use(package: Path) -> None:
    checked = validate_package(package)
    assert checked.spec.model.not_for_clinical_use
    assert checked.spec.identity.not_for_clinical_use
    assert "not for clinical use" in checked.spec.identity.description.lower()
    assert "not for clinical use" in (package / "model.toml").read_text().lower()


def test_demo_packages_are_small() -> None:
    total = sum(f.stat().st_size for f in (DEMO_CT.parent).rglob("*") if f.is_file())
    assert total < 5 * 1024 * 1024


def test_spec_exposes_what_the_node_lists() -> None:
    spec = validate_package(DEMO_CR).spec
    assert (spec.model.name, spec.model.task) == ("demo-cr-classifier", Task.CLASSIFICATION)
    assert spec.model.version and "CR" in spec.input.modalities
    assert [label.name for label in spec.labels] == ["nodule", "mass"]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="model package folder not found"):
        validate_package(tmp_path / "absent")


def test_missing_model_toml(package_dir: Path) -> None:
    package_dir.mkdir()
    with pytest.raises(ModelPackageError, match=r"model\.toml.*file not found"):
        validate_package(package_dir)


def test_missing_network_file(package_dir: Path) -> None:
    write_package(package_dir, CLASSIFIER_TOML)
    with pytest.raises(ModelPackageError, match=r"model\.onnx: -: file not found"):
        validate_package(package_dir)


def test_invalid_toml(package_dir: Path) -> None:
    write_package(package_dir, "[model\nname = 1")
    with pytest.raises(ModelPackageError, match="not valid TOML"):
        validate_package(package_dir)


def test_unknown_key_is_named(package_dir: Path) -> None:
    _classifier(
        package_dir,
        CLASSIFIER_TOML.replace('resize = "letterbox"', 'resize = "letterbox"\nsizes = 3'),
    )
    with pytest.raises(ModelPackageError, match=r"model\.toml: input\.sizes: Extra inputs"):
        validate_package(package_dir)


def test_out_of_range_threshold_is_named(package_dir: Path) -> None:
    text = CLASSIFIER_TOML.replace('name = "bright"\n', 'name = "bright"\nthreshold = 1.5\n')
    _classifier(package_dir, text)
    with pytest.raises(ModelPackageError, match=r"output\.labels\.0\.threshold.*1\.5"):
        validate_package(package_dir)


def test_window_needs_center_and_width(package_dir: Path) -> None:
    _classifier(package_dir, CLASSIFIER_TOML.replace('method = "minmax"', 'method = "window"'))
    with pytest.raises(ModelPackageError, match=r"input\.intensity.*needs both center and width"):
        validate_package(package_dir)


def test_int8_needs_calibration(package_dir: Path) -> None:
    _classifier(package_dir, CLASSIFIER_TOML + '\n[runtime]\nprecision = "int8"\n')
    with pytest.raises(ModelPackageError, match=r"needs runtime\.calibration"):
        validate_package(package_dir)


def test_label_count_against_output_width(package_dir: Path) -> None:
    extra = CLASSIFIER_TOML.split("[[output.labels]]")[1].replace('"bright"', '"second"')
    _classifier(package_dir, CLASSIFIER_TOML + "\n[[output.labels]]" + extra)
    with pytest.raises(ModelPackageError, match=r"graph\.output\[logits\].*1 channels, expected 2"):
        validate_package(package_dir)


def test_input_name_must_exist(package_dir: Path) -> None:
    _classifier(package_dir, CLASSIFIER_TOML.replace('name = "image"', 'name = "pixels"'))
    with pytest.raises(ModelPackageError, match=r"graph\.input\[pixels\]: not in the graph"):
        validate_package(package_dir)


def test_input_size_must_match_graph(package_dir: Path) -> None:
    _classifier(package_dir, CLASSIFIER_TOML.replace("size = [64, 64]", "size = [64, 32]"))
    with pytest.raises(ModelPackageError, match=r"spatial axis 1 is 64.*says 32"):
        validate_package(package_dir)


def test_rank_must_match_dimensions(package_dir: Path) -> None:
    segmenter_package(package_dir, dims=2, size=(16, 16))
    text = (package_dir / "model.toml").read_text().replace("dimensions = 2", "dimensions = 3")
    (package_dir / "model.toml").write_text(text.replace("size = [16, 16]", "size = [4, 16, 16]"))
    with pytest.raises(ModelPackageError, match=r"rank 4 .*needs rank 5"):
        validate_package(package_dir)


def test_static_batch_below_max_batch(package_dir: Path) -> None:
    segmenter_package(package_dir, size=(16, 16))
    model = onnx.load(str(package_dir / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(package_dir / "model.onnx"))
    with pytest.raises(ModelPackageError, match=r"static batch 1 is below runtime\.max_batch 4"):
        validate_package(package_dir)


def test_cam_weight_must_exist(package_dir: Path) -> None:
    _classifier(
        package_dir, CLASSIFIER_TOML.replace('weight = "head.weight"', 'weight = "fc.weight"')
    )
    with pytest.raises(
        ModelPackageError, match=r"graph\.initializer\[fc\.weight\]: not in the graph"
    ):
        validate_package(package_dir)


def test_corrupt_onnx(package_dir: Path) -> None:
    write_package(package_dir, CLASSIFIER_TOML)
    (package_dir / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelPackageError, match=r"model\.onnx: graph:"):
        validate_package(package_dir)


def test_detection_outputs_checked(package_dir: Path) -> None:
    write_package(package_dir, DETECTOR_TOML)
    fixed_box_graph(package_dir / "model.onnx", np.zeros((2, 4)), np.zeros((2, 3)))
    with pytest.raises(ModelPackageError, match=r"graph\.output\[scores\].*3 channels, expected 1"):
        validate_package(package_dir)


def test_task_needs_its_outputs(package_dir: Path) -> None:
    write_package(package_dir, DETECTOR_TOML.replace('boxes = "boxes"\n', ""))
    threshold_graph(package_dir / "model.onnx", [100, 100], 0.5)
    with pytest.raises(ModelPackageError, match=r"needs output\.boxes and output\.scores"):
        validate_package(package_dir)


def test_load_model_fails_at_start_not_at_first_study(package_dir: Path) -> None:
    shutil.copytree(DEMO_CT, package_dir)
    text = (package_dir / "model.toml").read_text().replace('name = "logits"', 'name = "mask"')
    (package_dir / "model.toml").write_text(text)
    with pytest.raises(ModelPackageError, match=r"graph\.output\[mask\]: not in the graph"):
        load_model(package_dir)
