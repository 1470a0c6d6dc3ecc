"""Model cards as the node reads them: checked fields, the version they apply to, the
text kept by hand, and what ``check-config`` and ``models`` say about them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from dicom_node.config import DriftSection
from inference import (
    ModelPackageError,
    SurveillancePlan,
    card_document,
    load_model,
    validate_package,
)
from inference.model_card import CARD_JSON, CARD_MD, ModelCard, TrainingProvenance, read_card
from inference.model_card_files import GENERATED_MARK, write_card
from sr_writer import build_results
from tests.conftest import run_cli
from tests.finetune.ct_with_seg import write_series
from tests.orchestration.studies import MODELS


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """The demo bone package without its torch program (not needed to validate)."""
    folder = tmp_path / "demo-ct-bone"
    shutil.copytree(MODELS / "demo-ct-bone", folder, ignore=shutil.ignore_patterns("*.pt2"))
    return folder


def _card(version: str = "1.0.0") -> ModelCard:
    return ModelCard(
        model="demo-ct-bone",
        version=version,
        intended_use="Demonstration.",
        limitations=["Synthetic phantoms only."],
        training_data=TrainingProvenance(
            sources=["phantoms"], study_date_first="2024-01-01", study_date_last="2024-03-01"
        ),
    )


def test_a_matching_card_is_named_in_the_identity(package: Path) -> None:
    write_card(package, _card())
    loaded = validate_package(package)
    assert loaded.card is not None and loaded.identity.model_card == "demo-ct-bone 1.0.0"


def test_a_card_of_another_version_is_not_named(package: Path) -> None:
    write_card(package, _card("0.9.0"))
    assert validate_package(package).identity.model_card == ""


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"model_card.json.*not JSON"),
        ('{"model": "m", "version": "1", "intended_usage": "x"}', r"intended_usage.*Extra inputs"),
        ('{"model": "m"}', r"version: Field required"),
    ],
)
def test_a_malformed_card_is_a_package_error_naming_the_key(
    package: Path, content: str, match: str
) -> None:
    (package / CARD_JSON).write_text(content, encoding="utf-8")
    with pytest.raises(ModelPackageError, match=match):
        validate_package(package)


def test_hand_written_text_survives_every_rendering(package: Path) -> None:
    (package / CARD_MD).write_text("# Bone demo\n\nReviewed by the physics team.\n")
    write_card(package, _card())
    write_card(package, _card())  # rendered again: the hand-written part once, on top
    text = (package / CARD_MD).read_text(encoding="utf-8")
    assert text.startswith("# Bone demo\n\nReviewed by the physics team.\n\n" + GENERATED_MARK)
    assert text.count("Reviewed by") == 1 and text.count("# Model card: demo-ct-bone") == 1
    assert "- Study dates: 2024-01-01 to 2024-03-01" in text
    assert read_card(package) == _card()
    plan = SurveillancePlan(window_studies=50, source="[drift] of node.toml")
    shown = card_document(package, read_card(package), plan)
    assert shown is not None and "the last 50 studies" in shown and "node.toml" in shown


def test_the_card_plan_defaults_are_the_node_drift_defaults() -> None:
    plan = SurveillancePlan().model_dump(exclude={"source"})
    assert plan == DriftSection().model_dump()


def test_check_config_and_models_warn_about_a_card_of_another_version(
    package: Path, tmp_path: Path
) -> None:
    write_card(package, _card("0.9.0"))
    config = tmp_path / "node.toml"
    config.write_text(f'[[models]]\nname = "bone"\npath = "{package}"\n')
    checked = run_cli("check-config", "-c", config)
    assert checked.returncode == 0, checked.stderr
    assert "warning: models[0].path: model_card.json describes demo-ct-bone 0.9.0" in (
        checked.stderr
    )
    listed = run_cli("models", "-c", config, "--json")
    (row,) = json.loads(listed.stdout)
    assert row["model_card"] is None and "0.9.0" in row["card_warning"]
    shown = run_cli("models", "-c", config, "--card", "bone")
    assert shown.returncode == 0 and "warning: bone: model_card.json describes" in shown.stderr
    (package / CARD_JSON).unlink()
    (package / CARD_MD).unlink()
    missing = run_cli("models", "-c", config, "--card", "bone")
    assert missing.returncode == 1 and "bone has no model card" in missing.stderr


def test_results_of_a_carded_package_name_the_card_in_the_sr(package: Path, tmp_path: Path) -> None:
    """The chain the worker runs: load_model, predict, build_results."""
    write_card(package, _card())
    series = write_series(tmp_path, np.random.default_rng(0), {"PatientID": "P1"})
    with load_model(package, "onnxruntime") as model:
        prediction = model.predict(series.datasets)
    assert prediction.model.model_card == "demo-ct-bone 1.0.0"
    sr = next(ds for ds in build_results(prediction, series.datasets) if ds.Modality == "SR")
    texts = [str(item.get("TextValue", "")) for item in _content(sr)]
    assert "model card: demo-ct-bone 1.0.0" in texts


def _content(item: Dataset) -> list[Dataset]:
    found = []
    for child in item.get("ContentSequence", []):
        found += [child, *_content(child)]
    return found
