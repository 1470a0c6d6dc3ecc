"""Proof: fine-tune a small backbone on generated DICOM, export it, and the node's own
`inference.load_model` gives the same predictions as PyTorch; the package is listed by
``dicom-node models``; a killed fold resumes to the same result.
"""

from __future__ import annotations

import csv
import json
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node.cli import main
from inference import Classification, load_model
from inference.finetune.config import read_config
from inference.finetune.data import load_training_data
from inference.finetune.export import export_package, load_fold_model
from inference.finetune.run import finetune
from inference.finetune.splits import patient_splits
from inference.finetune.training import train_fold
from inference.model_card import read_card
from tests.finetune.nodule import finetune_and_export, nodule_config, write_nodule_set

pytestmark = pytest.mark.slow

CONFIG = nodule_config(
    "test-nodule",
    "0.3.0",
    "Tests: flags a nodule on generated radiographs.",
    epochs=2,
    bootstrap=50,
    sections="""
[runtime]
max_batch = 4

[card]
sources = ["generated radiographs (inference.finetune.synthetic)"]
labelling = "drawn by the generator: a nodule is present where one was drawn"
limitations = ["Generated images only."]
""",
)


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nodule_set(tmp_path_factory.mktemp("chest"), 14, seed=5, config=CONFIG)


@pytest.fixture(scope="module")
def trained(chest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Fine-tune and export through the command line, as a data scientist would."""
    out = tmp_path_factory.mktemp("out")
    run, package = out / "run", out / "package"
    assert finetune_and_export(chest, run, package) == 0
    return run, package


def test_report_has_every_figure_and_its_data(trained: tuple[Path, Path]) -> None:
    run, _ = trained
    report = run / "report"
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "initialisation: random (no pretrained weights given)" in text
    assert "Equalized-odds gap" in text and "| sex |" in text and "| age_band |" in text
    figures = json.loads((report / "figures.json").read_text(encoding="utf-8"))
    assert set(figures) == {"roc_nodule", "calibration_nodule", "confusion_nodule"}
    assert figures["roc_nodule"]["shipped"]["fold"] in (1, 2)
    assert all("count" in b for b in figures["calibration_nodule"]["bins"])
    for figure in figures.values():
        assert (report / figure["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (report / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3  # self-contained
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    pooled = results["labels"][0]["pooled"]
    assert pooled["n"] == 14 and len(results["labels"][0]["folds"]) == 2
    assert sum(map(sum, pooled["confusion"])) == 14


def test_package_spec_carries_threshold_and_cam(trained: tuple[Path, Path]) -> None:
    run, package = trained
    spec = tomllib.loads((package / "model.toml").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert spec["output"]["labels"][0]["threshold"] == pytest.approx(summary["thresholds"][0])
    assert spec["output"]["cam"] == {"feature_output": "features", "weight": "head.weight"}
    assert spec["model"]["version"] == "0.3.0"


def test_node_predictions_equal_pytorch(chest: Path, trained: tuple[Path, Path]) -> None:
    run, package = trained
    config = read_config(chest / "train.toml")
    fold = json.loads((run / "summary.json").read_text(encoding="utf-8"))["selected_fold"]
    network = load_fold_model(run, fold, config)
    data = load_training_data(chest / "dicom", config.spec, (18, 40, 65), chest / "labels.csv")
    with torch.no_grad():
        logits, _ = network(torch.from_numpy(data.images))
    ours = torch.sigmoid(logits).numpy()[:, 0]
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        assert model.spec.runtime.max_batch == 4
        for path in sorted((chest / "dicom").glob("*.dcm")):
            ds = pydicom.dcmread(path)
            prediction = model.predict([ds])
            assert isinstance(prediction, Classification)
            case = next(i for i, c in enumerate(data.cases) if c.key == ds.StudyInstanceUID)
            expected = float(ours[data.case_of == case].max())
            assert prediction.scores[0].probability == pytest.approx(expected, abs=1e-5)
            if prediction.scores[0].positive:
                assert prediction.heatmaps[0].values.shape == (48, 48)


def test_torch_program_runs_on_the_torch_backend_like_onnxruntime(
    chest: Path, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = trained
    result = export_package(run, tmp_path / "package", torch_program=True, echo=lambda _: None)
    assert (tmp_path / "package" / "model.pt2").is_file()
    spec = tomllib.loads((tmp_path / "package" / "model.toml").read_text(encoding="utf-8"))
    assert spec["runtime"]["torch_file"] == "model.pt2"
    assert result.max_abs_diff["logits (torch program)"] < 1e-5
    ds = pydicom.dcmread(sorted((chest / "dicom").glob("*.dcm"))[0])
    scores = []
    for backend in ("onnxruntime", "torch"):
        with load_model(tmp_path / "package", backend=backend, device="cpu") as model:
            prediction = model.predict([ds])
            assert isinstance(prediction, Classification)
            scores.append(prediction.scores[0].probability)
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_dicom_node_models_lists_the_package(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, package = trained
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
storage_dir = "{tmp_path / "spool"}"
database_url = "sqlite:///{tmp_path / "node.db"}"

[[peers]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242

[[models]]
name = "nodule"
path = "{package}"
backend = "onnxruntime"
device = "cpu"

[[routes]]
name = "cr"
models = ["nodule"]
match = {{ Modality = "CR" }}
destinations = ["pacs"]
""",
        encoding="utf-8",
    )
    assert main(["models", "-c", str(config), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {
            "name": "nodule",
            "path": str(package),
            "model": "test-nodule",
            "version": "0.3.0",
            "task": "classification",
            "backend": "onnxruntime",
            "device": "cpu",
            "model_card": "test-nodule 0.3.0",  # the card export wrote applies
        }
    ]


def test_killed_fold_resumes_to_the_same_result(chest: Path, tmp_path: Path) -> None:
    config = read_config(chest / "train.toml", {"epochs": 3, "patience": 3})
    data = load_training_data(chest / "dicom", config.spec, (18, 40, 65), chest / "labels.csv")
    split = patient_splits([c.patient for c in data.cases], ["" for _ in data.cases], 2, 0)[0]
    device = torch.device("cpu")
    torch.set_num_threads(1)
    whole = train_fold(config, data, split, tmp_path / "whole", device, progress=False)

    def kill_after_first(epoch: int, loss: float, metric: float) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(config, data, split, tmp_path / "resumed", device, False, kill_after_first)
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    assert not (tmp_path / "resumed" / "done.json").exists()
    resumed = train_fold(config, data, split, tmp_path / "resumed", device, progress=False)
    assert resumed.epochs_run == whole.epochs_run == 3
    assert resumed.best_epoch == whole.best_epoch
    np.testing.assert_allclose(resumed.scores, whole.scores, rtol=0, atol=1e-6)
    # A finished fold is reloaded, not retrained; another config is refused.
    again = train_fold(config, data, split, tmp_path / "resumed", device, progress=False)
    np.testing.assert_array_equal(again.scores, resumed.scores)
    other = read_config(chest / "train.toml", {"epochs": 4})
    with pytest.raises(ValueError, match="another configuration"):
        train_fold(other, data, split, tmp_path / "resumed", device, progress=False)


def test_finetune_refuses_missing_weights(chest: Path, tmp_path: Path) -> None:
    config = read_config(chest / "train.toml", {"weights": str(tmp_path / "absent.pt")})
    with pytest.raises(FileNotFoundError, match="pretrained weights not found"):
        finetune(config, chest / "dicom", tmp_path / "run", chest / "labels.csv", progress=False)


def test_finetune_and_export_write_the_model_card(chest: Path, trained: tuple[Path, Path]) -> None:
    """The card's counts are the training set's, read back from its DICOM headers."""
    run, package = trained
    headers = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in (chest / "dicom").rglob("*.dcm")
    ]
    with (chest / "labels.csv").open() as handle:
        labels = {row["StudyInstanceUID"]: row["nodule"] for row in csv.DictReader(handle)}
    studies = {str(ds.StudyInstanceUID): ds for ds in headers if ds.StudyInstanceUID in labels}
    card = read_card(package)
    assert card is not None and (card.model, card.version) == ("test-nodule", "0.3.0")
    data = card.training_data
    assert data is not None and data.cases == len(studies) and data.unit == "study"
    assert data.patients == len({str(ds.PatientID) for ds in studies.values()})
    assert data.counts.by_sex == dict(Counter(str(ds.PatientSex) for ds in studies.values()))
    assert data.counts.by_manufacturer == {"unknown": len(studies)}  # CR headers name none
    dates = sorted(str(ds.StudyDate) for ds in studies.values())
    assert (data.study_date_first, data.study_date_last) == (
        f"{dates[0][:4]}-{dates[0][4:6]}-{dates[0][6:]}",
        f"{dates[-1][:4]}-{dates[-1][4:6]}-{dates[-1][6:]}",
    )
    assert data.positives == {"nodule": sum(v == "1" for v in labels.values() if v)}
    assert data.labelling.startswith("drawn by the generator")
    assert "Generated images only." in card.limitations
    results = json.loads((run / "report" / "results.json").read_text(encoding="utf-8"))
    internal = card.internal_validation
    assert internal is not None
    (entry,) = internal.labels
    assert entry["auc"] == results["labels"][0]["pooled"]["auc"]
    spec = tomllib.loads((package / "model.toml").read_text(encoding="utf-8"))
    assert entry["threshold"] == pytest.approx(spec["output"]["labels"][0]["threshold"])
    assert read_card(run) is not None  # the run keeps its own card
    text = (package / "model_card.md").read_text(encoding="utf-8")
    assert "# Model card: test-nodule 0.3.0" in text and "### Internal validation" in text
