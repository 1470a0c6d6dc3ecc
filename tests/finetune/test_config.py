"""Training configs: checked with the node's own package spec models, errors name keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import inference.finetune as finetune_package
from inference import ModelPackageError, ModelSpec
from inference.finetune.config import exported_spec, read_config
from inference.finetune.toml_writer import dumps

CONFIG = """
[model]
name = "test-opacity"
version = "0.1.0"
task = "classification"
intended_use = "Tests."

[input]
modalities = ["CR"]
size = [32, 32]
channels = 1
intensity = { method = "minmax" }

[[output.labels]]
name = "opacity"
finding = { value = "49755003", scheme = "SCT", meaning = "Morphologically abnormal structure" }
category = { value = "404684003", scheme = "SCT", meaning = "Clinical finding" }

[training]
backbone = "resnet18"
weights = "weights/backbone.pt"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_a_config_with_defaults_and_relative_weights(tmp_path: Path) -> None:
    config = read_config(_write(tmp_path, CONFIG), {"epochs": 3, "folds": None})
    assert config.training.epochs == 3
    assert config.training.folds == 5  # None overrides leave the file's value
    assert config.spec.output.name == "logits"
    assert config.spec.input.name == "image"
    assert config.weights_path == tmp_path / "weights" / "backbone.pt"


def test_the_documented_example_config_is_valid() -> None:
    example = Path(finetune_package.__file__).parent / "example_config.toml"
    config = read_config(example)
    assert config.training.backbone.value == "resnet18"
    assert config.weights_path == example.parent / "weights" / "resnet18.pt"
    assert config.spec.output.labels[0].finding.meaning == "Pneumothorax"
    assert config.card.labelling.startswith("two radiologists")


def test_card_section_is_checked_and_does_not_change_the_fingerprint(tmp_path: Path) -> None:
    plain = read_config(_write(tmp_path, CONFIG))
    carded = read_config(_write(tmp_path, CONFIG + '\n[card]\nsources = ["site A"]\n'))
    assert carded.card.sources == ["site A"] and carded.fingerprint() == plain.fingerprint()
    with pytest.raises(ModelPackageError, match=r"card\.source: Extra inputs"):
        read_config(_write(tmp_path, CONFIG + '\n[card]\nsource = "site A"\n'))


def test_unknown_training_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match=r"training\.epoch: Extra inputs"):
        read_config(_write(tmp_path, CONFIG + "epoch = 3\n"))


def test_package_field_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match=r"input: .*size \[32\]"):
        read_config(_write(tmp_path, CONFIG.replace("size = [32, 32]", "size = [32]")))


def test_backbone_must_fit_the_task(tmp_path: Path) -> None:
    text = CONFIG.replace('backbone = "resnet18"', 'backbone = "unet_resnet18"')
    with pytest.raises(ModelPackageError, match="does not fit task classification"):
        read_config(_write(tmp_path, text))


def test_exported_spec_round_trips_through_toml(tmp_path: Path) -> None:
    config = read_config(_write(tmp_path, CONFIG))
    spec = exported_spec(config, [0.37], "head.weight")
    assert spec.output.labels[0].threshold == 0.37
    assert spec.output.cam is not None and spec.output.cam.weight == "head.weight"
    text = dumps(spec.model_dump(mode="json"), "a header\nover two lines")
    assert text.startswith("# a header\n# over two lines\n")
    assert ModelSpec.model_validate(tomllib.loads(text)) == spec
    with pytest.raises(ValueError, match="2 thresholds for 1 labels"):
        exported_spec(config, [0.3, 0.4], None)


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ("rotaton_degrees = 5.0", "rotaton_degrees"),
        ("flip_vertical = 1.5", "flip_vertical is a probability"),
    ],
)
def test_augment_keys_and_ranges_are_checked_where_the_config_is_read(
    tmp_path: Path, augment: str, message: str
) -> None:
    text = f"{CONFIG}\n[training.augment]\n{augment}\n"
    with pytest.raises(ModelPackageError, match=message):
        read_config(_write(tmp_path, text))
