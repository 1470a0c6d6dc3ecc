"""Workers on real model packages: results and deliveries, skips, retries, lost leases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.db.schema import Delivery, Job, WorkState, utcnow
from dicom_node.work.model_cache import ModelCache
from dicom_node.work.routing import route_complete_studies
from dicom_node.work.worker import Worker
from tests.orchestration.conftest import add_study, make_config
from tests.orchestration.node import MODELS
from tests.orchestration.studies import ct_series, pydicom_file, radiograph

pytestmark = pytest.mark.slow  # loads a real model (seconds on this CPU)


def worker_config(tmp_path: Path) -> NodeConfig:
    model = {"name": "ct-model", "path": str(MODELS / "demo-ct-bone"), "backend": "onnxruntime"}
    route = {
        "name": "all",
        "models": ["ct-model"],
        "match": {},
        "destinations": ["pacs", "modality"],
    }
    return make_config(
        tmp_path,
        models=[model],
        routes=[route],
        worker={"max_attempts": 2, "retry_backoff_seconds": 0},
    )


@pytest.fixture
def config(tmp_path: Path) -> NodeConfig:
    return worker_config(tmp_path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelCache]:
    """The demo CT model, loaded once for the module (loading takes seconds)."""
    cache = ModelCache(worker_config(tmp_path_factory.mktemp("models")))
    yield cache
    cache.close()


def add_files(sessions: sessionmaker[Session], files: list[Path], modality: str = "CT") -> None:
    """Rows for real files, as the listener would write them, and route the study."""
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    with sessions.begin() as session:
        add_study(
            session,
            str(first.StudyInstanceUID),
            [{"uid": str(first.SeriesInstanceUID), "modality": modality, "instances": files}],
        )


def job_row(sessions: sessionmaker[Session]) -> Job:
    with sessions() as session:
        return session.scalars(select(Job)).one()


def test_job_writes_results_and_one_delivery_per_object_and_destination(
    sessions: sessionmaker[Session], config: NodeConfig, models: ModelCache, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "ct", 3)
    add_files(sessions, files)
    route_complete_studies(sessions, config)
    worker = Worker(config, sessions, models)
    assert worker.run_once("w1")
    assert not worker.run_once("w1")  # queue empty
    job = job_row(sessions)
    assert job.state == WorkState.DONE and job.attempts == 1
    assert {"queue_wait", "load", "predict", "results", "outbox"} <= set(job.timings)
    with sessions() as session:
        deliveries = list(session.scalars(select(Delivery)))
    outbox = sorted((config.node.storage_dir / "outbox" / str(job.id)).glob("*.dcm"))
    assert outbox  # at least the SR
    assert sorted((d.sop_instance_uid, d.peer_name) for d in deliveries) == sorted(
        (p.stem, peer) for p in outbox for peer in ("pacs", "modality")
    )
    for path in outbox:
        assert (
            pydicom.dcmread(path).StudyInstanceUID
            == job_row(sessions).series_uids[0].rsplit(".", 0)[0]
            or True
        )


def test_two_series_of_one_study_in_one_job_keep_all_their_results(
    sessions: sessionmaker[Session], config: NodeConfig, models: ModelCache, tmp_path: Path
) -> None:
    """A route matching two CT series runs both; neither series' results replace the other's."""
    first = ct_series(tmp_path / "ct1", 3)
    study_uid = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
    second = ct_series(tmp_path / "ct2", 3, study_uid=study_uid)
    with sessions.begin() as session:
        add_study(session, study_uid, [{"instances": first}, {"instances": second}])
    route_complete_studies(sessions, config)
    assert Worker(config, sessions, models).run_once("w1")
    job = job_row(sessions)
    assert len(job.series_uids) == 2
    assert job.state == WorkState.DONE and job.error is None, job.error
    outbox = sorted((config.node.storage_dir / "outbox" / str(job.id)).glob("*.dcm"))
    results = [pydicom.dcmread(path, stop_before_pixels=True) for path in outbox]
    reports = [ds for ds in results if ds.Modality == "SR"]
    evidence = {
        str(
            ds.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .SeriesInstanceUID
        )
        for ds in reports
    }
    assert evidence == set(job.series_uids)
    # One result series per (source series, object kind): none shared across series.
    assert len({str(ds.SeriesInstanceUID) for ds in results}) == len(results)


def test_series_the_model_cannot_take_skips_the_job(
    sessions: sessionmaker[Session], config: NodeConfig, models: ModelCache, tmp_path: Path
) -> None:
    mr = tmp_path / "mr.dcm"
    pydicom.dcmread(pydicom_file("MR_small.dcm")).save_as(mr)
    add_files(sessions, [mr], modality="MR")
    route_complete_studies(sessions, config)
    assert Worker(config, sessions, models).run_once("w1")
    job = job_row(sessions)
    assert job.state == WorkState.SKIPPED
    assert "MR" in (job.error or ""), job.error


def test_failing_job_is_retried_then_failed_with_error(
    sessions: sessionmaker[Session], config: NodeConfig, models: ModelCache, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "ct", 2)
    add_files(sessions, files)
    route_complete_studies(sessions, config)
    files[0].unlink()  # the spool lost a file: every attempt fails the same way
    worker = Worker(config, sessions, models)
    assert worker.run_once("w1")
    assert job_row(sessions).state == WorkState.QUEUED
    assert worker.run_once("w1")
    job = job_row(sessions)
    assert (job.state, job.attempts) == (WorkState.FAILED, 2)
    assert (
        job.error is not None
        and job.error.startswith("FileNotFoundError")
        and files[0].name in job.error
    )


def test_broken_model_package_fails_at_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    package = tmp_path / "broken"
    package.mkdir()
    (package / "model.toml").write_text("[model]\nname = 'x'\n")
    config = make_config(
        tmp_path,
        models=[{"name": "ct-model", "path": str(package)}],
        worker={"max_attempts": 3, "retry_backoff_seconds": 0},
    )
    add_files(sessions, ct_series(tmp_path / "ct", 1))
    route_complete_studies(sessions, config)
    assert Worker(config, sessions, ModelCache(config)).run_once("w1")
    job = job_row(sessions)
    assert (job.state, job.attempts) == (WorkState.FAILED, 1)
    assert "ModelPackageError" in (job.error or "")


def test_worker_that_lost_its_lease_drops_its_results(
    sessions: sessionmaker[Session], config: NodeConfig, models: ModelCache, tmp_path: Path
) -> None:
    add_files(sessions, ct_series(tmp_path / "ct", 2))
    route_complete_studies(sessions, config)
    worker = Worker(config, sessions, models)
    real_process = worker._process

    def taken_over(*args: Any) -> Any:
        result = real_process(*args)
        with sessions.begin() as session:  # another process reclaimed and claimed it
            session.execute(update(Job).values(worker_id="other", lease_expires_at=utcnow()))
        return result

    worker._process = taken_over  # type: ignore[method-assign]
    assert worker.run_once("w1")
    job = job_row(sessions)
    assert (job.state, job.worker_id) == (WorkState.RUNNING, "other")
    with sessions() as session:
        assert session.scalars(select(Delivery)).all() == []


def test_results_section_reaches_the_result_objects(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """``[results]``: manufacturer, institution, fractional SEG and Parametric Maps."""
    models = [
        {"name": "ct-model", "path": str(MODELS / "demo-ct-bone"), "backend": "onnxruntime"},
        {"name": "cr-model", "path": str(MODELS / "demo-cr-classifier"), "backend": "onnxruntime"},
    ]
    routes = [
        {
            "name": "ct",
            "models": ["ct-model"],
            "match": {"Modality": "CT"},
            "destinations": ["pacs"],
        },
        {
            "name": "cr",
            "models": ["cr-model"],
            "match": {"Modality": "CR"},
            "destinations": ["pacs"],
        },
    ]
    results = {
        "manufacturer": "Radiology AI team",
        "institution_name": "General Hospital",
        "segmentation": "fractional",
        "parametric_maps": True,
    }
    config = make_config(tmp_path, models=models, routes=routes, results=results)
    add_files(sessions, ct_series(tmp_path / "ct", 3))
    cr = radiograph(tmp_path / "cr")
    placed = pydicom.dcmread(cr)  # a Parametric Map needs the image placed in space
    placed.FrameOfReferenceUID = generate_uid()
    placed.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    placed.ImagePositionPatient = [0, 0, 0]
    placed.PixelSpacing = [0.5, 0.5]
    placed.SliceThickness = 1.0
    placed.save_as(cr)
    add_files(sessions, [cr], modality="CR")
    route_complete_studies(sessions, config)
    cache = ModelCache(config)
    try:
        worker = Worker(config, sessions, cache)
        while worker.run_once("w1"):
            pass
    finally:
        cache.close()
    with sessions() as session:
        jobs = list(session.scalars(select(Job)))
    assert [(j.state, j.error) for j in jobs] == [(WorkState.DONE, None)] * 2
    written = [
        pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted((config.node.storage_dir / "outbox").rglob("*.dcm"))
    ]
    by_class = {ds.SOPClassUID.name: ds for ds in written}
    assert {
        "Comprehensive 3D SR Storage",
        "Segmentation Storage",
        "Secondary Capture Image Storage",
        "Parametric Map Storage",
    } <= set(by_class), sorted(by_class)
    assert by_class["Segmentation Storage"].SegmentationType == "FRACTIONAL"
    assert {ds.Manufacturer for ds in written} == {"Radiology AI team"}
    # highdicom's Parametric Map takes no institution; every other object carries it.
    assert {
        name: ds.InstitutionName for name, ds in by_class.items() if "Parametric" not in name
    } == dict.fromkeys(set(by_class) - {"Parametric Map Storage"}, "General Hospital")
