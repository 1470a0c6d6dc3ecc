"""The orchestration side of the CLI: models, status, retry, send's exit status, and model
checks in check-config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dicom_node.audit import read_audit, study_history
from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.db.schema import WorkState
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work.jobs import ClaimedJob, claim_job, end_job, retry_or_fail
from dicom_node.work.routing import route_complete_studies
from tests.orchestration.archive import run_archive
from tests.orchestration.conftest import add_study
from tests.orchestration.node import MODELS, dump_toml
from tests.orchestration.studies import ct_series


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
    retry_or_fail(
        sessions,
        job,
        "RuntimeError: boom",
        max_attempts=1,
        backoff_seconds=0,
        backoff_max_seconds=0,
    )
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
    assert (
        capsys.readouterr().out.strip()
        == f"requeued 1 job(s) ({job.id}), 0 delivery(ies) and 0 notification(s)"
    )
    assert main(["retry", "-c", str(config), "--job", "999"]) == 1
    assert "no job with id 999" in capsys.readouterr().err


def test_retry_failed_audits_each_requeued_job_with_its_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, engine, sessions, first = _claimed_job(tmp_path, studies=3)
    second = claim_job(sessions, "w", 60)
    assert second is not None
    for job in (first, second):
        fail_now = {"max_attempts": 1, "backoff_seconds": 0, "backoff_max_seconds": 0}
        retry_or_fail(sessions, job, "RuntimeError: boom", **fail_now)
    engine.dispose()

    assert main(["retry", "-c", str(config), "--failed"]) == 0
    assert capsys.readouterr().out.startswith("requeued 2 job(s)")
    trail = tmp_path / "var" / "audit"
    requeued = [line for line in read_audit(trail) if line["event"] == "requeued"]
    assert sorted((line["job_id"], line["model"]) for line in requeued) == [
        (first.id, "ct"),
        (second.id, "ct"),
    ]
    [line] = [r for r in requeued if r["job_id"] == first.id]
    assert [h["event"] for h in study_history(trail, line["study_uid"])] == ["requeued"]


SEND_STATUSES = [
    (0x0000, 0),  # Success
    (0x0001, 0),  # Warning: Requested optional attributes are not supported
    (0x0107, 0),  # Warning: Attribute list error
    (0x0116, 0),  # Warning: Attribute value out of range
    (0xB000, 0),  # Warning: Coercion of data elements
    (0xB007, 0),  # Warning: Data set does not match SOP class
    (0xA700, 1),  # Failure: Out of resources (transient)
    (0x0213, 1),  # Failure: Resource limitation (transient)
    (0xA900, 1),  # Failure: Data set does not match SOP class (permanent)
    (0xC000, 1),  # Failure: Cannot understand (permanent)
    (0x0122, 1),  # Failure: SOP class not supported (permanent)
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "exit_code"),
    SEND_STATUSES,
    ids=[f"0x{status:04X}" for status, _ in SEND_STATUSES],
)
def test_send_exit_status_follows_the_store_outcome_of_each_status_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int, exit_code: int
) -> None:
    """A warning status means the peer stored the instance: `send` succeeds (it exited 1)."""
    files = ct_series(tmp_path / "ct", 2)
    with run_archive() as archive:
        archive.status = status
        spec = f"{archive.ae_title}@127.0.0.1:{archive.port}"
        code = main(["send", str(tmp_path / "ct"), "--to", spec, "--no-progress"])
    assert code == exit_code
    out, err = capsys.readouterr()
    assert f"0x{status:04X} x{len(files)}" in out
    assert (str(files[0]) in err) == (exit_code == 1)  # only failures are listed


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
