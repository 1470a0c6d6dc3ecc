"""The orchestration side of the CLI: models, status, retry, and model checks in check-config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.db import create_db_engine, session_factory
from dicom_node.jobs import ClaimedJob, claim_job, end_job, retry_or_fail
from dicom_node.routing import route_complete_studies
from dicom_node.schema import WorkState
from tests.orchestration.conftest import add_study
from tests.orchestration.node import MODELS, dump_toml


def write(tmp_path: Path, models: list[dict[str, object]]) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        dump_toml(
            {
                "node": {
                    "storage_dir": str(tmp_path / "storage"),
                    "database_url": f"sqlite:///{tmp_path / 'node.db'}",
                },
                "peers": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}],
                "models": models,
                "routes": [
                    {
                        "name": "ct",
                        "models": ["ct"],
                        "match": {"Modality": "CT"},
                        "destinations": ["pacs"],
                    }
                ],
            }
        )
    )
    return config


def test_check_config_warns_about_a_condition_that_never_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, [{"name": "ct", "path": str(MODELS / "demo-ct-bone")}])
    text = config.read_text().replace(
        'match = { Modality = "CT" }', "match = { PatientWeight = 80 }"
    )
    config.write_text(text)
    assert main(["check-config", "-c", str(config)]) == 0
    assert "warning: routes[0].match.PatientWeight: not kept" in capsys.readouterr().err


def test_check_config_names_a_broken_model_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.toml").write_text("[model]\nname = 'ct'\n")
    config = write(tmp_path, [{"name": "ct", "path": str(broken)}])
    assert main(["check-config", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "models[0].path: " in err and str(broken) in err


def test_check_config_names_the_3d_package_key_that_makes_no_sense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (MODELS / "demo-ct-body3d" / "model.toml").read_text()
    package = tmp_path / "body3d"
    package.mkdir()
    (package / "model.onnx").write_bytes((MODELS / "demo-ct-body3d" / "model.onnx").read_bytes())
    (package / "model.toml").write_text(text.replace('orientation = "RAS"', 'orientation = "RAX"'))
    config = write(tmp_path, [{"name": "ct", "path": str(package)}])
    assert main(["check-config", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "models[0].path: " in err and "input.geometry.orientation" in err and "'RAX'" in err


@pytest.mark.slow  # starts a real model
def test_models_lists_version_task_backend_and_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path,
        [
            {"name": "ct", "path": str(MODELS / "demo-ct-bone")},
            {"name": "gone", "path": str(tmp_path / "gone")},
        ],
    )
    assert main(["models", "-c", str(config), "--json"]) == 1  # one of them cannot start
    ok, missing = json.loads(capsys.readouterr().out)
    assert (ok["model"], ok["version"], ok["task"]) == ("demo-ct-bone", "1.0.0", "segmentation")
    assert (ok["backend"], ok["device"]) == ("onnxruntime", "cpu")  # what auto picks on this CPU
    assert missing["name"] == "gone" and "gone" in missing["error"]


def _claimed_job(tmp_path: Path, studies: int) -> tuple[Path, Any, Any, ClaimedJob]:
    """A config, its database with ``studies`` routed CT studies, and one claimed job."""
    config = write(tmp_path, [{"name": "ct", "path": str(MODELS / "demo-ct-bone")}])
    loaded = load_config(config)
    engine = create_db_engine(loaded.node.database_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        for n in range(studies):
            add_study(session, f"1.5.{n}", [{"modality": "CT"}])
    route_complete_studies(sessions, loaded)
    job = claim_job(sessions, "w", 60)
    assert job is not None
    return config, engine, sessions, job


def test_status_shows_the_queue_and_failures_and_retry_requeues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, engine, sessions, job = _claimed_job(tmp_path, studies=3)
    retry_or_fail(sessions, job, "RuntimeError: boom", max_attempts=1, backoff_seconds=0)
    engine.dispose()
    assert main(["status", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"]["queued"] == 2 and report["jobs"]["failed"] == 1
    assert report["jobs"]["oldest_queued_seconds"] >= 0
    assert report["deliveries"] == {s: 0 for s in report["deliveries"]}
    assert report["failures"] == {f"job {job.id} (ct)": "RuntimeError: boom"}
    assert main(["status", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert "jobs:" in text and "failed" in text and "RuntimeError: boom" in text
    assert main(["retry", "-c", str(config), "--job", str(job.id)]) == 0
    assert capsys.readouterr().out.strip() == f"requeued 1 job(s) ({job.id}) and 0 delivery(ies)"
    assert main(["retry", "-c", str(config), "--job", "999"]) == 1
    assert "no job with id 999" in capsys.readouterr().err


def test_status_says_why_a_job_was_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, engine, sessions, job = _claimed_job(tmp_path, studies=1)
    reason = "series 1.2.3: stack (40 frame(s) of 512x512): uneven slice steps"
    with sessions.begin() as session:
        assert end_job(session, job, WorkState.SKIPPED, error=reason)
    engine.dispose()
    assert main(["status", "-c", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == {f"job {job.id} (ct)": reason}
    assert main(["status", "-c", str(config)]) == 0
    assert "skipped:" in capsys.readouterr().out
