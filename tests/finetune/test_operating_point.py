"""The exported package, its threshold and the report agree: the package run by the
node's own `load_model(...).predict` reproduces, on the data its threshold was chosen
on, the operating point the report states for it; and what surrounds it (--force,
model.toml, best epochs, printed precision, progress) says what is true.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node.cli import main
from inference import Classification, load_model
from inference.finetune.config import read_config
from inference.finetune.data import load_training_data
from inference.finetune.run import finetune
from inference.finetune.synthetic import OPACITY, write_chest_set

pytestmark = pytest.mark.slow

# A shallow ResNet that learns the opacity within four epochs, so that its thresholds
# fall between validation scores rather than below all of them.
CONFIG = """
[model]
name = "test-opacity"
version = "0.1.0"
task = "classification"
intended_use = "Tests: flags an opacity on generated radiographs."

[input]
modalities = ["CR"]
size = [32, 32]
intensity = { method = "percentile" }

[[output.labels]]
name = "opacity"
finding = { value = "49755003", scheme = "SCT", meaning = "Morphologically abnormal structure" }
category = { value = "404684003", scheme = "SCT", meaning = "Clinical finding" }

[training]
backbone = "resnet18"
encoder_depth = 2
freeze_stages = 0
lr = 0.01
epochs = 4
batch_size = 8
folds = 2
bootstrap = 50
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list[str]]:
    folder = tmp_path_factory.mktemp("opacity")
    write_chest_set(folder, 24, (OPACITY,), size=48, seed=5)
    (folder / "train.toml").write_text(CONFIG, encoding="utf-8")
    torch.set_num_threads(1)
    printed: list[str] = []
    finetune(
        read_config(folder / "train.toml"),
        folder / "dicom",
        folder / "run",
        folder / "labels.csv",
        progress=False,
        echo=printed.append,
    )
    assert main(["export", "--run", str(folder / "run"), "--out", str(folder / "package")]) == 0
    return folder, folder / "run", folder / "package", printed


def _json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_package_reproduces_the_reported_operating_point(
    exported: tuple[Path, Path, Path, list[str]],
) -> None:
    folder, run, package, _ = exported
    summary, results = _json(run / "summary.json"), _json(run / "report" / "results.json")
    fold = summary["selected_fold"]
    reported = next(f for f in results["labels"][0]["folds"] if f["fold"] == fold)
    validation = next(f for f in summary["folds"] if f["fold"] == fold)["validation"]
    spec = tomllib.loads((package / "model.toml").read_text(encoding="utf-8"))
    assert spec["output"]["labels"][0]["threshold"] == reported["threshold"]
    # The threshold splits the validation scores: the check below is not trivial.
    assert 0 < sum(reported["confusion"][0][1::] + reported["confusion"][1][1::]) < reported["n"]
    positive = {
        row.split(",")[0]: row.split(",")[1] == "1"
        for row in (folder / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
    }
    counts = np.zeros((2, 2), dtype=int)
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        for path in sorted((folder / "dicom").glob("*.dcm")):
            ds = pydicom.dcmread(path)
            if ds.StudyInstanceUID not in validation:
                continue
            prediction = model.predict([ds])
            assert isinstance(prediction, Classification)
            counts[int(positive[ds.StudyInstanceUID]), int(prediction.scores[0].positive)] += 1
    assert counts.sum() == reported["n"] == len(validation)
    assert counts.tolist() == reported["confusion"]
    report = (run / "report" / "report.md").read_text(encoding="utf-8")
    (tn, fp), (fn, tp) = reported["confusion"]
    assert f"| opacity | {reported['threshold']:.4f} | {reported['n']} |" in report
    assert f"| {tn} {fp} {fn} {tp} |" in report
    provenance = _json(package / "training.json")
    assert provenance["fold"] == fold and provenance["thresholds"] == [reported["threshold"]]


def test_best_epochs_agree_between_done_json_summary_and_report(
    exported: tuple[Path, Path, Path, list[str]],
) -> None:
    _, run, _, _ = exported
    summary, results = _json(run / "summary.json"), _json(run / "report" / "results.json")
    for row, reported in zip(summary["folds"], results["labels"][0]["folds"], strict=True):
        done = _json(run / f"fold-{row['fold']}" / "done.json")
        assert done["best_epoch"] == row["best_epoch"] == reported["best_epoch"]
        assert 1 <= done["best_epoch"] <= done["epochs_run"]


def test_printed_figures_have_sane_precision_and_html_no_backticks(
    exported: tuple[Path, Path, Path, list[str]],
) -> None:
    _, run, _, printed = exported
    headline = next(line for line in printed if line.startswith("opacity: pooled"))
    assert re.search(r"AUC \d\.\d{3} \(", headline)
    assert not re.search(r"\d\.\d{5,}", headline), headline
    # 24 studies: the figures that rest on them say so where they are printed, too.
    assert any(
        re.match(r"\d+ figure\(s\) rest on small numbers, e\.g\. ", line) for line in printed
    )
    html = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "`" not in html and "<code>resnet18</code>" in html


def test_model_toml_names_no_torch_file_that_was_not_written(
    exported: tuple[Path, Path, Path, list[str]],
) -> None:
    _, _, package, _ = exported
    spec = tomllib.loads((package / "model.toml").read_text(encoding="utf-8"))
    assert "torch_file" not in spec["runtime"]
    assert not list(package.glob("*.pt2"))


def test_an_existing_package_is_replaced_only_with_force_and_refused_before_any_work(
    exported: tuple[Path, Path, Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, run, _, _ = exported
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.toml").write_text("# the package a node serves\n", encoding="utf-8")
    status = main(
        [
            "finetune",
            "--config",
            str(folder / "train.toml"),
            "--data",
            str(folder / "dicom"),
            "--labels",
            str(folder / "labels.csv"),
            "--out",
            str(tmp_path / "run"),
            "--export",
            str(served),
            "--no-progress",
        ]
    )
    assert status == 1
    assert "package folder exists" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before indexing or training
    # export: the check comes first, before the run folder is even read.
    assert main(["export", "--run", str(tmp_path / "nowhere"), "--out", str(served)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (served / "model.toml").read_text(encoding="utf-8") == "# the package a node serves\n"
    assert main(["export", "--run", str(run), "--out", str(served), "--force"]) == 0
    out = capsys.readouterr().out
    assert "export: exporting fold" in out and "export: parity PyTorch vs ONNX Runtime" in out
    assert "test-opacity" in (served / "model.toml").read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["served"]  # no staging folder left


def test_progress_is_shown_while_indexing_and_preprocessing(
    exported: tuple[Path, Path, Path, list[str]], capfd: pytest.CaptureFixture[str]
) -> None:
    folder, _, _, _ = exported
    config = read_config(folder / "train.toml")
    load_training_data(folder / "dicom", config.spec, (40,), folder / "labels.csv", progress=True)
    err = capfd.readouterr().err
    assert "indexing DICOM headers" in err and "24file" in err.replace(" ", "")
    assert "reading and preprocessing" in err and "/24 [" in err


def test_pretrained_weights_are_named_by_file_and_hash(tmp_path: Path) -> None:
    from inference.finetune.run import weights_provenance

    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"not really weights")
    assert weights_provenance(weights) == {
        "file": "backbone.pt",
        "sha256": hashlib.sha256(b"not really weights").hexdigest(),
        "provenance": "as declared by the user",
    }
    assert weights_provenance(None) is None
