"""``finetune --export`` and ``export --data`` give the package its drift profile, built
from the shipped fold's validation studies exactly as the node records its jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicom_node.cli import main
from dicom_node.work.drift import package_profile
from inference import validate_package
from tests.finetune.nodule import finetune_and_export, nodule_config, write_nodule_set

pytestmark = pytest.mark.slow  # trains a tiny network twice over two folds

CONFIG = nodule_config(
    "drift-nodule",
    "0.1.0",
    "Tests: a profile from the validation studies.",
    epochs=1,
    bootstrap=20,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder, and the run and package of ``finetune --export`` on it."""
    root = write_nodule_set(tmp_path_factory.mktemp("profiled"), 12, seed=11, config=CONFIG)
    assert finetune_and_export(root, root / "run", root / "package") == 0
    return root


def test_finetune_export_writes_the_validation_profile(trained: Path) -> None:
    summary = json.loads((trained / "run" / "summary.json").read_text(encoding="utf-8"))
    fold = summary["selected_fold"]
    validated = next(f["validation"] for f in summary["folds"] if f["fold"] == fold)
    profile = package_profile(validate_package(trained / "package"))
    assert profile is not None and profile.model == "drift-nodule"
    assert profile.studies == len(validated) < 12  # the shipped fold's held-out studies only
    assert {"intensity_p50", "foreground_fraction", "score:nodule"} <= set(profile.numeric)
    assert set(profile.categorical["AgeBand"]) <= {"0-17", "18-39", "40-64", "65+", "unknown"}
    files = (trained / "dicom").rglob("*.dcm")
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    sexes = {str(h.PatientSex) for h in headers if h.StudyInstanceUID in validated}
    assert set(profile.categorical["PatientSex"]) == sexes


def test_export_with_the_data_writes_the_same_profile(trained: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    export = ["export", "--run", str(trained / "run"), "--out", str(again), "--no-progress"]
    assert main([*export, "--data", str(trained / "dicom")]) == 0
    ours = (again / "profile.json").read_text(encoding="utf-8")
    assert ours == (trained / "package" / "profile.json").read_text(encoding="utf-8")


def test_export_without_the_validation_studies_says_so(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = ["export", "--run", str(trained / "run"), "--out", str(tmp_path / "pkg")]
    assert main([*export, "--data", str(trained / "run")]) == 1
    error = capsys.readouterr().err
    assert f"{tmp_path / 'pkg'} is written, its drift profile is not: no series in" in error
    assert "validation case(s)" in error
    assert main([*export[:-2], "--out", str(tmp_path / "bare")]) == 0
    assert "no drift profile written (give --data" in capsys.readouterr().out
    assert not (tmp_path / "bare" / "profile.json").exists()
