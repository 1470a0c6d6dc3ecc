"""Chained models on real (small) packages, in process: gating, selection, a mask that
restricts the next model, and a failing step shown per step and in the earlier report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig
from dicom_node.db.schema import Delivery, Job, WorkState
from dicom_node.work.jobs import requeue_jobs
from dicom_node.work.model_cache import ModelCache
from dicom_node.work.queue_report import chains_section
from dicom_node.work.retention import apply_retention
from dicom_node.work.routing import route_complete_studies
from dicom_node.work.worker import Worker
from tests.orchestration.chain_models import (
    WINDOW_LOW,
    WINDOW_WIDTH,
    classifier_package,
    threshold_package,
)
from tests.orchestration.conftest import add_study, make_config
from tests.orchestration.pacs import dciodvfy_errors
from tests.orchestration.studies import ct_series

# Between whole Hounsfield units, so that no pixel sits exactly on a threshold.
DENSE_HU, SOFT_HU = 300.5, -200.5


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    return {
        "finds-liver": classifier_package(
            root / "finds-liver", "finds-liver", {"liver": 4.0, "lung": -4.0}
        ),
        "finds-nothing": classifier_package(
            root / "finds-nothing", "finds-nothing", {"liver": -4.0, "lung": -4.0}
        ),
        "dense": threshold_package(root / "dense", "dense-seg", DENSE_HU, "dense"),
        "bone": threshold_package(root / "bone", "bone-seg", DENSE_HU, "dense"),
        "soft": threshold_package(root / "soft", "soft-seg", SOFT_HU, "soft"),
    }


def chain_config(
    tmp_path: Path, packages: dict[str, Path], steps: list[dict[str, Any]]
) -> NodeConfig:
    models = [
        {"name": name, "path": str(path), "backend": "onnxruntime"}
        for name, path in packages.items()
    ]
    models.append({"name": "broken", "path": str(tmp_path / "no-such-package")})
    route = {"name": "chain", "steps": steps, "match": {}, "destinations": ["pacs"]}
    return make_config(
        tmp_path,
        models=models,
        routes=[route],
        worker={"max_attempts": 1, "retry_backoff_seconds": 0},
    )


@pytest.fixture
def study(sessions: sessionmaker[Session], tmp_path: Path) -> list[Path]:
    files = ct_series(tmp_path / "ct", 3)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    with sessions.begin() as session:
        add_study(
            session,
            str(first.StudyInstanceUID),
            [{"uid": str(first.SeriesInstanceUID), "instances": files}],
        )
    return files


def run_all(config: NodeConfig, sessions: sessionmaker[Session]) -> dict[str, Job]:
    """Route the study and run every job the chain creates; jobs by step (or model)."""
    route_complete_studies(sessions, config)
    models = ModelCache(config)
    try:
        worker = Worker(config, sessions, models)
        for _ in range(10):
            if not worker.run_once("w1"):
                break
    finally:
        models.close()
    with sessions() as session:
        return {job.step or job.model_name: job for job in session.scalars(select(Job))}


def outbox(config: NodeConfig, job: Job) -> list[pydicom.Dataset]:
    folder = config.node.storage_dir / "outbox" / str(job.id)
    return [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]


def of_modality(datasets: list[pydicom.Dataset], modality: str) -> pydicom.Dataset:
    (found,) = [ds for ds in datasets if ds.Modality == modality]
    return found


def comments(report: pydicom.Dataset) -> list[str]:
    """Every TEXT item of an SR, at any depth."""
    found = []
    for item in report.ContentSequence:
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        if "ContentSequence" in item:
            found.extend(comments(item))
    return found


def observer_model(report: pydicom.Dataset) -> str:
    """The Device Observer Model Name of a TID 1500 report: the model that made it."""
    for item in report.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121015":  # Device Observer Model Name
            return str(item.TextValue)
    raise AssertionError("no device observer model name")


def test_a_finding_gates_the_next_step(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    steps = [
        {"name": "classify", "model": "finds-liver"},
        {"name": "segment", "model": "dense", "when": {"step": "classify", "label": "liver"}},
        {"name": "lung", "model": "soft", "when": {"step": "classify", "label": "lung"}},
    ]
    config = chain_config(tmp_path, packages, steps)
    jobs = run_all(config, sessions)
    assert jobs["finds-liver"].state == WorkState.DONE
    segment = jobs["segment"]
    assert segment.state == WorkState.DONE, segment.error
    assert segment.upstream_job_id == jobs["finds-liver"].id
    assert segment.route_name == "chain" and segment.model_name == "dense"
    lung = jobs["lung"]
    assert lung.state == WorkState.SKIPPED
    assert lung.error is not None and "step 'classify' did not find 'lung'" in lung.error
    report = of_modality(outbox(config, segment), "SR")
    assert observer_model(report) == "dense-seg 0.1"
    text = " | ".join(comments(report))
    assert "Chain 'chain', step 'segment': ran after step 'classify' (model finds-liver)" in text
    assert "Condition: 'liver' present" in text
    assert not dciodvfy_errors(
        config.node.storage_dir / "outbox" / str(segment.id) / f"{report.SOPInstanceUID}.dcm"
    )
    with sessions() as session:
        shown = chains_section(session, config)
    first = jobs["finds-liver"].id
    assert shown == {
        f"job {first} chain/classify (finds-liver)": "done",
        f"job {segment.id} chain/segment (dense)": f"done after job {first}",
        f"job {lung.id} chain/lung (soft)": f"skipped after job {first}: {lung.error}",
    }


def test_a_classifier_label_selects_the_model(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    steps = [
        {"name": "organ", "model": "finds-liver"},
        {
            "name": "segment",
            "select": {"step": "organ", "models": {"liver": "dense", "lung": "soft"}},
        },
    ]
    config = chain_config(tmp_path, packages, steps)
    jobs = run_all(config, sessions)
    assert jobs["segment"].model_name == "dense" and jobs["segment"].state == WorkState.DONE
    assert "Model selected by the label of step 'organ'" in comments(
        of_modality(outbox(config, jobs["segment"]), "SR")
    )


def test_no_positive_label_selects_nothing_and_says_so(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    steps = [
        {"name": "organ", "model": "finds-nothing"},
        {
            "name": "segment",
            "select": {"step": "organ", "models": {"liver": "dense", "lung": "soft"}},
        },
        {"name": "after", "model": "finds-liver", "when": {"step": "segment", "label": "dense"}},
    ]
    config = chain_config(tmp_path, packages, steps)
    jobs = run_all(config, sessions)
    assert jobs["segment"].state == WorkState.SKIPPED
    assert jobs["segment"].model_name == "dense|soft"
    assert "step 'organ' found no label" in (jobs["segment"].error or "")
    assert jobs["after"].state == WorkState.SKIPPED
    assert (jobs["after"].error or "").startswith("not run: step 'segment' was skipped")


def seg_pixels(seg: pydicom.Dataset, sop_uids: list[str]) -> np.ndarray:
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, assert_missing_frames_are_empty=True
    )
    return np.asarray(pixels[..., 0] > 0)


def test_a_mask_restricts_the_next_model_on_the_source_slices(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    """The soft-tissue threshold alone finds more than the dense one; restricted to the
    dense mask it finds exactly that mask, frame by frame on the same source slices."""
    steps = [
        {"name": "bone", "model": "dense"},
        {"name": "inside", "model": "soft", "input_mask": "bone:dense"},
    ]
    config = chain_config(tmp_path, packages, steps)
    jobs = run_all(config, sessions)
    inside = jobs["inside"]
    assert inside.state == WorkState.DONE, inside.error
    sources = [pydicom.dcmread(path) for path in study]
    sop_uids = [str(ds.SOPInstanceUID) for ds in sources]
    bone = seg_pixels(of_modality(outbox(config, jobs["dense"]), "SEG"), sop_uids)
    restricted = seg_pixels(of_modality(outbox(config, inside), "SEG"), sop_uids)
    hounsfield = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in sources]
    )
    assert np.array_equal(bone, hounsfield > DENSE_HU)
    assert (hounsfield > SOFT_HU).sum() > bone.sum() > 0  # unrestricted, it would find more
    assert np.array_equal(restricted, bone)
    seg = of_modality(outbox(config, inside), "SEG")
    referenced = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= set(sop_uids)
    report = of_modality(outbox(config, inside), "SR")
    assert "Input restricted to the 'dense' segment of step 'bone'" in " ".join(comments(report))


def test_retention_keeps_a_mask_until_the_step_that_reads_it_has_run(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    steps = [
        {"name": "bone", "model": "dense"},
        {"name": "inside", "model": "soft", "input_mask": "bone:dense"},
    ]
    config = chain_config(tmp_path, packages, steps).model_copy(
        update={"retention": make_config(tmp_path, retention={"delete_when_done": True}).retention}
    )
    route_complete_studies(sessions, config)
    models = ModelCache(config)
    try:
        worker = Worker(config, sessions, models)
        assert worker.run_once("w1")  # the bone step only
        with sessions.begin() as session:  # its results delivered
            for delivery in session.scalars(select(Delivery)):
                delivery.state = WorkState.DONE
        apply_retention(sessions, config)
        assert worker.run_once("w1")
    finally:
        models.close()
    with sessions() as session:
        inside = session.scalars(select(Job).where(Job.step == "inside")).one()
    assert inside.state == WorkState.DONE, inside.error


def test_a_failed_step_is_shown_per_step_and_amends_the_earlier_report(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    steps = [
        {"name": "classify", "model": "finds-liver"},
        {"name": "segment", "model": "broken", "when": {"step": "classify", "label": "liver"}},
        {"name": "inside", "model": "soft", "input_mask": "segment:dense"},
    ]
    config = chain_config(tmp_path, packages, steps)
    jobs = run_all(config, sessions)
    segment, inside = jobs["segment"], jobs["inside"]
    assert segment.state == WorkState.FAILED
    assert inside.state == WorkState.SKIPPED
    assert (inside.error or "").startswith("not run: step 'segment' failed: ModelPackageError")
    amended = outbox(config, segment)
    (report,) = amended
    original = of_modality(outbox(config, jobs["finds-liver"]), "SR")
    assert report.CompletionFlag == "PARTIAL"
    assert report.SeriesInstanceUID == original.SeriesInstanceUID
    assert report.SOPInstanceUID != original.SOPInstanceUID
    predecessor = report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert observer_model(report) == "finds-liver 0.1"
    assert any(
        text.startswith("Chain 'chain': step 'segment' (model broken) failed: ModelPackageError")
        for text in comments(report)
    )
    path = config.node.storage_dir / "outbox" / str(segment.id) / f"{report.SOPInstanceUID}.dcm"
    assert not dciodvfy_errors(path)
    with sessions() as session:
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == segment.id)).all()
    assert [(d.sop_instance_uid, d.peer_name) for d in deliveries] == [
        (report.SOPInstanceUID, "pacs")
    ]


def test_a_retried_step_decides_its_later_steps_again(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    """The later rows of a re-run step are renewed, not duplicated."""
    steps = [
        {"name": "classify", "model": "finds-liver"},
        {"name": "segment", "model": "dense", "when": {"step": "classify", "label": "liver"}},
    ]
    config = chain_config(tmp_path, packages, steps)
    first = run_all(config, sessions)
    requeue_jobs(sessions, job_id=first["finds-liver"].id)
    again = run_all(config, sessions)
    assert again["segment"].id == first["segment"].id
    assert again["segment"].state == WorkState.DONE
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 2


def test_later_steps_run_only_on_the_series_their_route_matched(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path]
) -> None:
    """A first step's job also runs its model on series another route gave it; the steps
    after it stay on their own route's series."""
    first = ct_series(tmp_path / "a", 2)
    study_uid = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
    second = ct_series(tmp_path / "b", 2, study_uid=study_uid)
    with sessions.begin() as session:
        add_study(
            session,
            study_uid,
            [
                {"instances": first, "description": "LIVER"},
                {"instances": second, "description": "OTHER"},
            ],
        )
    config = chain_config(
        tmp_path,
        packages,
        [{"name": "bone", "model": "dense"}, {"model": "soft", "input_mask": "bone:dense"}],
    )
    chain = config.routes[0].model_copy(update={"match": {"SeriesDescription": "LIVER"}})
    plain = chain.model_copy(
        update={"name": "plain", "steps": [], "models": ["dense"], "match": {}}
    )
    config = config.model_copy(update={"routes": [chain, plain]})
    jobs = run_all(config, sessions)
    assert len(jobs["dense"].series_uids) == 2
    first_series = str(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID)
    assert jobs["soft"].series_uids == [first_series]
    assert jobs["soft"].state == WorkState.DONE, jobs["soft"].error


def test_a_step_gone_from_the_config_fails_rather_than_runs_unrestricted(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path], study: list[Path]
) -> None:
    steps = [
        {"name": "bone", "model": "dense"},
        {"name": "inside", "model": "soft", "input_mask": "bone:dense"},
    ]
    config = chain_config(tmp_path, packages, steps)
    route_complete_studies(sessions, config)
    models = ModelCache(config)
    try:
        assert Worker(config, sessions, models).run_once("w1")  # bone; inside is queued
        shorter = config.routes[0].model_copy(update={"steps": config.routes[0].steps[:1]})
        changed = config.model_copy(update={"routes": [shorter]})
        assert Worker(changed, sessions, models).run_once("w1")
    finally:
        models.close()
    with sessions() as session:
        inside = session.scalars(select(Job).where(Job.step == "inside")).one()
    assert inside.state == WorkState.FAILED
    assert inside.error == "StepInputError: route 'chain' has no step 'inside' any more"


def windowed_mean(path: Path) -> float:
    """An image's mean as the chain packages' window gives it to the model (0-1)."""
    ds = pydicom.dcmread(path)
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return float(np.clip((hounsfield - WINDOW_LOW) / WINDOW_WIDTH, 0, 1).mean())


def test_a_step_after_a_selection_runs_once_per_selected_model(
    sessions: sessionmaker[Session], tmp_path: Path, packages: dict[str, Path]
) -> None:
    """Two series of one study: the brighter is "chest" (dense), the all-air one
    "abdomen" (bone); the masked step after the selection has a job after each, and
    the one after bone, which found nothing, is skipped with the reason."""
    chest = ct_series(tmp_path / "chest", 2)
    study_uid = str(pydicom.dcmread(chest[0], stop_before_pixels=True).StudyInstanceUID)
    abdomen = ct_series(tmp_path / "abdomen", 2, study_uid=study_uid)
    for path in abdomen:
        ds = pydicom.dcmread(path)
        ds.PixelData = np.full_like(ds.pixel_array, ds.pixel_array.min()).tobytes()
        ds.save_as(path)
    with sessions.begin() as session:
        add_study(session, study_uid, [{"instances": chest}, {"instances": abdomen}])
    middle = (windowed_mean(chest[0]) + windowed_mean(abdomen[0])) / 2
    by_brightness = classifier_package(
        tmp_path / "by-brightness",
        "by-brightness",
        {"chest": -40 * middle, "abdomen": 40 * middle},
        weights=[40.0, -40.0],
    )
    config = chain_config(
        tmp_path,
        {**packages, "by-brightness": by_brightness},
        [
            {"name": "region", "model": "by-brightness"},
            {
                "name": "organ",
                "select": {"step": "region", "models": {"chest": "dense", "abdomen": "bone"}},
            },
            {"name": "inside", "model": "soft", "input_mask": "organ:dense"},
        ],
    )
    route_complete_studies(sessions, config)
    models = ModelCache(config)
    try:
        worker = Worker(config, sessions, models)
        while worker.run_once("w1"):
            pass
    finally:
        models.close()
    with sessions() as session:
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
    organ = {job.model_name: job for job in jobs if job.step == "organ"}
    assert set(organ) == {"dense", "bone"}
    chest_series = str(pydicom.dcmread(chest[0], stop_before_pixels=True).SeriesInstanceUID)
    assert organ["dense"].series_uids == [chest_series]
    inside = {job.upstream_job_id: job for job in jobs if job.step == "inside"}
    assert inside[organ["dense"].id].state == WorkState.DONE
    after_bone = inside[organ["bone"].id]
    assert after_bone.state == WorkState.SKIPPED
    assert "step 'organ' found no 'dense' to restrict the input to" in (after_bone.error or "")
