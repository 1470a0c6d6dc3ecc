"""``dicom-node evaluate``: a package on an external labelled set, as the node runs it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference import load_model
from inference.finetune import LabelFileError, evaluate_package
from inference.finetune.synthetic import MASS, NODULE, write_chest_set
from tests.conftest import run_cli
from tests.orchestration.studies import MODELS

pytestmark = pytest.mark.slow  # runs a real package on a few dozen radiographs

CLASSIFIER = MODELS / "demo-cr-classifier"
PATIENTS = 24


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled set the demo never saw, plus one unlabelled and one missing study."""
    folder = tmp_path_factory.mktemp("external")
    write_chest_set(folder, PATIENTS, (NODULE, MASS), size=128, seed=11)
    write_chest_set(folder / "extra", 1, (NODULE, MASS), size=128, seed=12)  # no label row
    with (folder / "labels.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["1.2.3.4.5.6.7.8.9", 1, 0])  # labelled, no DICOM
    return folder


@pytest.fixture(scope="module")
def report(external: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    evaluate_package(
        CLASSIFIER, external, external / "labels.csv", out, backend="onnxruntime", progress=False
    )
    return out


def node_decisions(external: Path) -> dict[str, dict[str, tuple[float, bool]]]:
    """What the node's own load_model(...).predict says per study, label by label."""
    found = {}
    with load_model(CLASSIFIER, "onnxruntime") as model:
        for path in sorted((external / "dicom").glob("*.dcm")):
            dataset = pydicom.dcmread(path)
            prediction = model.predict([dataset])
            found[str(dataset.StudyInstanceUID)] = {
                s.label.name: (s.probability, s.positive)
                for s in prediction.scores  # type: ignore[union-attr]
            }
    return found


def test_report_matches_the_node_decisions_at_package_thresholds(
    external: Path, report: Path
) -> None:
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    decisions = node_decisions(external)
    with (external / "labels.csv").open() as handle:
        truth = {row["StudyInstanceUID"]: row for row in csv.DictReader(handle)}
    thresholds = {"nodule": 0.418453, "mass": 0.654254}  # the package's model.toml
    for label in results["labels"]:
        name = label["label"]
        (row,) = label["folds"]
        assert row["fold"] == "external"
        assert row["threshold"] == pytest.approx(thresholds[name])
        cm = np.zeros((2, 2), int)
        for study, by_label in decisions.items():
            cm[int(truth[study][name]), int(by_label[name][1])] += 1
        assert row["confusion"] == cm.tolist() and row["n"] == PATIENTS
        assert label["pooled"]["calibration"]["bins"] and label["pooled"]["subgroups"]
    assert results["run"]["skipped"]["no_dicom"] == 1
    assert results["run"]["skipped"]["no_label"] == 1


def test_report_reads_as_an_external_validation(report: Path) -> None:
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "External validation of the package" in text
    assert "## The package at its own operating point" in text
    assert "| external (shipped) |" in text and "Equalized-odds gap" in text
    assert "| pooled |" not in text  # the one external row is the pooled one
    assert (report / "roc_nodule.png").read_bytes()[:4] == b"\x89PNG"


def test_segmentation_package_wants_seg_labels_not_a_csv(external: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels of a segmentation package are a folder of DICOM"):
        evaluate_package(
            MODELS / "demo-ct-bone", external, external / "labels.csv", tmp_path, progress=False
        )


def test_labels_without_a_package_label_are_refused(external: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("StudyInstanceUID,opacity\n1.2.3,1\n")
    with pytest.raises(LabelFileError, match=r"label column\(s\) \['nodule', 'mass'\] missing"):
        evaluate_package(CLASSIFIER, external, labels, tmp_path / "out", progress=False)


def test_cli_prints_the_summary_and_fails_with_the_reason(external: Path, tmp_path: Path) -> None:
    def evaluate(labels: Path) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "evaluate",
            "--model",
            CLASSIFIER,
            "--data",
            external,
            "--labels",
            labels,
            "--out",
            tmp_path / "out",
            "--backend",
            "onnxruntime",
            "--no-progress",
        )

    done = evaluate(external / "labels.csv")
    assert done.returncode == 0, done.stderr
    assert f"{PATIENTS} case(s) evaluated, skipped: no_label 1, no_dicom 1" in done.stdout
    failed = evaluate(tmp_path / "missing.csv")
    assert (
        failed.returncode == 1 and "evaluate: " in failed.stderr and "missing.csv" in failed.stderr
    )


def test_card_gets_the_external_validation_and_models_prints_it(
    external: Path, tmp_path: Path
) -> None:
    package = tmp_path / "demo-cr-classifier"
    shutil.copytree(CLASSIFIER, package)
    (package / "model_card.md").write_text("# Demo\n\nWritten by hand.\n")
    for _ in range(2):  # a second evaluation adds a second entry, keeps the first
        evaluate_package(
            package, external, external / "labels.csv", tmp_path / "out", progress=False, card=True
        )
    card = json.loads((package / "model_card.json").read_text())
    first, second = card["external_validations"]
    assert second["labels"] == first["labels"]  # same package, same set: same figures
    assert first["cases"] == PATIENTS and [x["label"] for x in first["labels"]] == [
        "nodule",
        "mass",
    ]
    assert first["labels"][0]["threshold"] == pytest.approx(0.418453)
    config = tmp_path / "node.toml"
    config.write_text(f'[[models]]\nname = "cr"\npath = "{package}"\n')
    shown = run_cli("models", "-c", config, "--card", "cr")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# Demo\n\nWritten by hand.\n")
    assert shown.stdout.count("## External validation:") == 2
    assert "| nodule | 0.4185 | 24 |" in shown.stdout
