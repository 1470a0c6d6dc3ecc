"""``dicom-node profile``, ``drift`` and ``check-config`` on a real package's profile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference.finetune.synthetic import MASS, NODULE, write_chest_set
from tests.conftest import run_cli
from tests.orchestration.node import node_document, write_config
from tests.orchestration.studies import MODELS

pytestmark = pytest.mark.slow  # runs the demo classifier on a few radiographs


def test_profile_then_drift_then_a_mismatched_profile(tmp_path: Path) -> None:
    package = tmp_path / "demo-cr-classifier"
    shutil.copytree(MODELS / "demo-cr-classifier", package)
    write_chest_set(tmp_path / "data", 12, (NODULE, MASS), size=128, seed=3)
    built = run_cli(
        "profile",
        "--model",
        package,
        "--data",
        tmp_path / "data",
        "--backend",
        "onnxruntime",
        "--no-progress",
    )
    assert built.returncode == 0, built.stderr
    assert "profile of 12 series" in built.stdout
    profile = json.loads((package / "profile.json").read_text())
    assert sorted(profile["positive_rates"]) == ["mass", "nodule"]
    assert {"score:nodule", "score:mass"} <= set(profile["numeric"])
    assert profile["categorical"]["PatientSex"]

    document = node_document(tmp_path, pacs=None)
    document["models"][1]["path"] = package
    config = write_config(tmp_path / "node.toml", document)
    assert run_cli("check-config", "-c", config).returncode == 0
    drift = run_cli("drift", "-c", config, "--model", "demo-cr-classifier", "--json")
    assert drift.returncode == 0, drift.stderr
    rows = json.loads(drift.stdout)
    assert {r["status"] for r in rows} == {"too_few"}  # no job has run yet
    assert {"Manufacturer", "positive_rate:nodule", "score:mass"} <= {r["feature"] for r in rows}

    profile["positive_rates"] = {"opacity": 0.3}
    (package / "profile.json").write_text(json.dumps(profile))
    checked = run_cli("check-config", "-c", config)
    assert checked.returncode == 1
    assert "models[1].path: drift profile:" in checked.stderr
    assert "labels ['opacity'] differ from the package's ['mass', 'nodule']" in checked.stderr
    assert run_cli("drift", "-c", config).returncode == 2
