"""``dicom-node backfill`` against a real Orthanc: C-FIND, C-GET or C-MOVE, resumable.

Orthanc holds studies of several dates and modalities; the backfill command runs in this
process (:func:`backfill`), or as a subprocess where a test SIGKILLs it in the middle of
a retrieval and runs it again on the same database and spool. No worker runs: the jobs
the routing creates stay queued, which is what these tests count.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_node.audit import study_history
from dicom_node.cli import build_parser
from dicom_node.cli.status import collect
from dicom_node.config import load_config
from dicom_node.db.schema import BackfillState, BackfillStudy, Instance, Job, Study, StudyState
from dicom_node.db.sessions import create_db_engine, session_factory
from tests.conftest import REPO_ROOT, get_free_port
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import outage
from tests.orchestration.studies import ct_series, pydicom_file, radiograph
from tests.peers import Orthanc, run_orthanc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IN_RANGE = ("--since", "2026-10-01", "--until", "2026-10-31")


def dated(files: list[Path], study_date: str, **values: Any) -> list[Path]:
    """Set StudyDate (and other attributes) on each file in place."""
    for path in files:
        dataset = pydicom.dcmread(path)
        dataset.StudyDate = study_date
        for keyword, value in values.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)
    return files


def backfill(config: Path, *args: str) -> tuple[int, str, str]:
    """``dicom-node backfill -c CONFIG ARGS`` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    parsed = build_parser().parse_args(["backfill", "-c", str(config), "--no-progress", *args])
    with redirect_stdout(out), redirect_stderr(err):
        status = int(parsed.run(parsed))
    return status, out.getvalue(), err.getvalue()


def study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@dataclass
class Archive:
    """Orthanc with the studies of one test, and the node's config pointing at it."""

    pacs: Orthanc
    config: Path
    url: str
    studies: dict[str, list[Path]]

    def uid(self, name: str) -> str:
        return study_uid(self.studies[name])

    def backfill(self, *args: str) -> dict[str, Any]:
        status, out, err = backfill(self.config, "--peer", "pacs", "--json", *args)
        assert status == 0, out + err
        return dict(json.loads(out))


def write_node_config(
    tmp_path: Path,
    pacs: Orthanc | None,
    port: int | None = None,
    name: str = "node.toml",
    **sections: Any,
) -> tuple[Path, str]:
    """A node config ``tmp_path/name``; every one of a test shares the database and spool."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    document = node_document(tmp_path, pacs=pacs, database_url=url, port=port, **sections)
    return write_config(tmp_path / name, document), url


def node_modality(port: int = 1, **permissions: bool) -> dict[str, Any]:
    """Orthanc's DicomModalities entry for the node (AE AINODE)."""
    return {"node": {"AET": "AINODE", "Host": "127.0.0.1", "Port": port, **permissions}}


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """October CTs (two), an October radiograph, a September CT, an October MR."""
    studies = {
        "ct_early": dated(ct_series(tmp_path / "a", 3), "20261005"),
        "ct_late": dated(ct_series(tmp_path / "b", 4), "20261020"),
        "cr": dated([radiograph(tmp_path / "c")], "20261012"),
        "ct_september": dated(ct_series(tmp_path / "d", 2), "20260920"),
        "mr": dated(ct_series(tmp_path / "e", 2), "20261015", Modality="MR"),
    }
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality()}) as pacs:
        for files in studies.values():
            pacs.upload(files)
        config, url = write_node_config(tmp_path, pacs)
        yield Archive(pacs, config, url, studies)


def db_rows(url: str) -> tuple[list[Study], list[Job], list[BackfillStudy], int]:
    engine = create_db_engine(url)
    try:
        with session_factory(engine)() as session:
            studies = list(session.scalars(select(Study)))
            jobs = list(session.scalars(select(Job).order_by(Job.id)))
            backfill = list(session.scalars(select(BackfillStudy)))
            instances = int(session.scalar(select(func.count(Instance.id))) or 0)
    finally:
        engine.dispose()
    return studies, jobs, backfill, instances


def test_a_date_range_retrieves_exactly_its_studies_once(archive: Archive) -> None:
    summary = archive.backfill(*IN_RANGE)
    wanted = {archive.uid("ct_early"), archive.uid("ct_late"), archive.uid("cr")}
    # The MR is in range but no route wants it: found, not fetched.
    assert (summary["found"], summary["retrieved"], summary["routed"]) == (4, 3, 3)
    assert (summary["no_match"], summary["jobs"], summary["instances"]) == (1, 3, 8)
    assert summary["failed"] == {}

    studies, jobs, rows, instances = db_rows(archive.url)
    assert {s.study_instance_uid for s in studies} == wanted
    assert all(s.state == StudyState.ROUTED for s in studies)
    assert all(s.completion_reason.startswith("backfill: C-GET of") for s in studies)
    assert instances == 8
    by_study = {s.id: s.study_instance_uid for s in studies}
    assert sorted((by_study[j.study_id], j.model_name, j.generation) for j in jobs) == sorted(
        [
            (archive.uid("ct_early"), "demo-ct-bone", 0),
            (archive.uid("ct_late"), "demo-ct-bone", 0),
            (archive.uid("cr"), "demo-cr-classifier", 0),
        ]
    )
    # Instances fetched by C-GET carry the archive's AE title, as if it had sent them:
    # the radiograph route's reply_to_sender finds the archive.
    cr_job = next(j for j in jobs if j.model_name == "demo-cr-classifier")
    assert cr_job.destinations == ["pacs"]
    states = {r.study_instance_uid: r.state for r in rows}
    assert states[archive.uid("mr")] == BackfillState.NO_MATCH
    assert {uid for uid, state in states.items() if state == BackfillState.ROUTED} == wanted

    by_state = collect(load_config(archive.config))["backfill"]  # dicom-node status
    assert by_state == {
        "found": 0,
        "retrieving": 0,
        "routed": 3,
        "present": 0,
        "no_match": 1,
        "failed": 0,
    }

    again = archive.backfill(*IN_RANGE)
    assert (again["retrieved"], again["routed"], again["done_before"]) == (0, 0, 3)
    _, jobs_after, _, instances_after = db_rows(archive.url)
    assert [j.id for j in jobs_after] == [j.id for j in jobs] and instances_after == instances


def test_on_postgresql(archive: Archive, tmp_path: Path, postgres_url: str) -> None:
    config, _ = write_node_config(
        tmp_path, archive.pacs, name="pg.toml", node={"database_url": postgres_url}
    )
    status, out, err = backfill(config, "--peer", "pacs", *IN_RANGE)
    assert status == 0 and "retrieved 3, routed 3 (3 job(s), 8 instances)" in out, out + err
    status, out, err = backfill(config, "--peer", "pacs", *IN_RANGE)
    assert status == 0 and "skipped 3 done before" in out and "retrieved 0" in out, out + err
    studies, jobs, rows, held = db_rows(postgres_url)
    assert (len(studies), len(jobs), len(rows), held) == (3, 3, 4, 8)


def test_route_modality_limit_and_dry_run(archive: Archive) -> None:
    dry = archive.backfill(*IN_RANGE, "--dry-run")
    assert (dry["found"], len(dry["would_retrieve"]), dry["retrieved"]) == (4, 3, 0)
    assert all(" series, " in line for line in dry["would_retrieve"])
    assert db_rows(archive.url)[2:] == ([], 0)  # a dry run writes nothing

    only_cr = archive.backfill(*IN_RANGE, "--route", "radiographs")
    assert (only_cr["retrieved"], only_cr["no_match"]) == (1, 3)
    first = archive.backfill(*IN_RANGE, "--modality", "CT", "--limit", "1")
    assert (first["found"], first["retrieved"], first["not_reached"]) == (2, 1, 1)
    rest = archive.backfill(*IN_RANGE, "--modality", "CT", "--rate", "600")
    assert (rest["retrieved"], rest["done_before"]) == (1, 1)
    studies, jobs, _, _ = db_rows(archive.url)
    assert len(studies) == len(jobs) == 3


def test_a_series_level_route_fetches_only_its_series(tmp_path: Path) -> None:
    chest = dated(ct_series(tmp_path / "chest", 3), "20261005", SeriesDescription="Chest 1mm")
    uid = study_uid(chest)
    scout = ct_series(tmp_path / "scout", 2, study_uid=uid)
    dated(scout, "20261005", SeriesDescription="Scout")
    chest_series = str(pydicom.dcmread(chest[0]).SeriesInstanceUID)
    routes = [
        {
            "name": "chest",
            "models": ["demo-ct-bone"],
            "match": {"Modality": "CT", "SeriesDescription": {"regex": "(?i)chest"}},
            "destinations": ["pacs"],
        }
    ]
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality()}) as pacs:
        pacs.upload([*chest, *scout])
        config, url = write_node_config(tmp_path, pacs, routes=routes)
        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert status == 0, out + err
    studies, jobs, rows, held = db_rows(url)
    assert held == 3 and [j.series_uids for j in jobs] == [[chest_series]]
    assert studies[0].completion_reason == "backfill: C-GET of 3/3 instances"
    assert rows[0].series_uids == [chest_series] and rows[0].expected_instances == 3
    events = {line["event"]: line for line in study_history(tmp_path / "var" / "audit", uid)}
    assert events["backfill-retrieved"]["method"] == "C-GET"
    assert events["backfill-retrieved"]["completed"] == 3
    assert events["instances-received"]["calling_aet"] == "ORTHANC"
    assert events["study-completed"]["reason"] == "backfill: C-GET of 3/3 instances"


COMPRESSED = (
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "MR_small_RLE.dcm",
)


def test_c_get_keeps_the_archive_s_compressed_encodings(tmp_path: Path) -> None:
    # Offered only uncompressed contexts, Orthanc transcodes, and fails (0xC000) on the
    # 12-bit JPEG; offered the study's own encodings, it sends each as it holds it.
    originals = {}
    for name in COMPRESSED:
        dataset = pydicom.dcmread(pydicom_file(name))
        dataset.StudyDate, dataset.Modality = "20261005", "CT"
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
        dataset.save_as(tmp_path / name)
        originals[str(dataset.SOPInstanceUID)] = dataset
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality()}) as pacs:
        pacs.upload(tmp_path / name for name in COMPRESSED)
        config, _ = write_node_config(tmp_path, pacs)
        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert status == 0 and "retrieved 4, routed 4" in out, out + err
    for path in (tmp_path / "storage" / "instances").rglob("*.dcm"):
        stored = pydicom.dcmread(path)
        original = originals.pop(str(stored.SOPInstanceUID))
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.PixelData == original.PixelData
    assert originals == {}


def test_a_study_received_normally_is_not_fetched(archive: Archive, tmp_path: Path) -> None:
    # The October CT arrives the usual way first: Orthanc sends it to the listener.
    port = get_free_port()
    config, _ = write_node_config(
        tmp_path, archive.pacs, port, "listener.toml", completion={"stable_seconds": 0.5}
    )
    archive.pacs.rest("PUT", "/modalities/node", node_modality(port)["node"])
    with run_node(config, role="listener", port=port) as node:
        archive.pacs.store("node", archive.pacs.upload(archive.studies["ct_early"]))
        wait_until(
            lambda: [s.state for s in db_rows(archive.url)[0]] == [StudyState.ROUTED],
            60,
            node.log_text,
        )
    summary = archive.backfill(*IN_RANGE)
    assert (summary["present"], summary["retrieved"], summary["routed"]) == (1, 2, 2)
    studies, jobs, _, _ = db_rows(archive.url)
    assert len(studies) == len(jobs) == 3
    assert all(j.generation == 0 for j in jobs)


def partly_held(database: Path, per_study: int = 30, whole: int = 1) -> bool:
    """Whether the node holds ``whole`` studies of ``per_study`` instances and part of
    another (a plain SQLite read: polled every few milliseconds while a backfill writes)."""
    if not database.exists():
        return False
    with closing(sqlite3.connect(database, timeout=1)) as connection:
        try:
            (held,) = connection.execute("SELECT count(*) FROM instances").fetchone()
        except sqlite3.OperationalError:  # the tables are not created yet
            return False
    return bool(held > per_study * whole and held % per_study)


def test_killed_during_a_retrieval_the_next_run_completes(tmp_path: Path) -> None:
    studies = [dated(ct_series(tmp_path / f"s{n}", 30), f"2026100{n + 1}") for n in range(3)]
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality()}) as pacs:
        for files in studies:
            pacs.upload(files)
        config, url = write_node_config(tmp_path, pacs)
        command = [sys.executable, "-m", "dicom_node", "backfill", "-c", str(config)]
        command += ["--peer", "pacs", "--since", "2026-10-01", "--no-progress"]
        log = (tmp_path / "killed.log").open("wb")
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log)
        try:
            # Killed once the first study is in and the second one is arriving.
            wait_until(
                lambda: partly_held(tmp_path / "node.db") or process.poll() is not None,
                120,
                lambda: (tmp_path / "killed.log").read_text(),
                interval=0.02,
            )
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        _, jobs, rows, held = db_rows(url)
        assert len(jobs) in (1, 2) and 30 < held < 90, (len(jobs), held)
        incoming = tmp_path / "storage" / "incoming"
        assert any(incoming.iterdir())  # the killed process's transfer folder

        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
        assert status == 0, out + err
        status, again, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
        assert status == 0 and "retrieved 0, routed 0" in again, again + err
    studies_rows, jobs, rows, held = db_rows(url)
    assert held == 90 and len(jobs) == 3
    assert all(s.instance_count == 30 and s.state == StudyState.ROUTED for s in studies_rows)
    assert all(j.generation == 0 for j in jobs)  # each study completed and routed once
    assert all(r.state == BackfillState.ROUTED for r in rows)
    spooled = list((tmp_path / "storage" / "instances").rglob("*.dcm"))
    assert len(spooled) == 90
    leftovers = [p for p in incoming.rglob("*") if p.is_file()]
    assert leftovers == []


def test_failed_sub_operations_fail_the_study_and_a_rerun_completes_it(
    archive: Archive, tmp_path: Path
) -> None:
    # A disk below the floor: the node answers every C-STORE sub-operation 0xA700.
    full, _ = write_node_config(
        tmp_path, archive.pacs, name="full.toml", node={"min_free_disk_mb": 1 << 40}
    )
    status, out, err = backfill(full, "--peer", "pacs", *IN_RANGE, "--modality", "CT")
    assert status == 1, out + err
    failed = {line.split(":", 1)[0] for line in out.splitlines() if line.startswith("failed ")}
    assert failed == {f"failed {archive.uid('ct_early')}", f"failed {archive.uid('ct_late')}"}
    assert "instances missing after retrieval" in out and "sub-operation(s) failed" in out
    _, jobs, rows, held = db_rows(archive.url)
    assert jobs == [] and held == 0
    assert {r.state for r in rows} == {BackfillState.FAILED}
    assert all(r.failed_suboperations == r.expected_instances for r in rows)

    assert archive.backfill(*IN_RANGE, "--modality", "CT")["routed"] == 2
    assert len(db_rows(archive.url)[1]) == 2


def test_ctrl_c_stops_with_the_summary_and_the_next_run_resumes(tmp_path: Path) -> None:
    files = dated(ct_series(tmp_path / "ct", 40), "20261005")
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality()}) as pacs:
        pacs.upload(files)
        config, url = write_node_config(tmp_path, pacs)
        command = [sys.executable, "-m", "dicom_node", "backfill", "-c", str(config)]
        command += ["--peer", "pacs", "--since", "2026-10-01", "--no-progress"]
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_until(
                lambda: partly_held(tmp_path / "node.db", 40, 0) or process.poll() is not None,
                120,
                "instances arriving",
                interval=0.02,
            )
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, out + err
        assert "found 1," in out and "run the same command again to resume" in err
        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert status == 0 and "retrieved 1, routed 1 (1 job(s), 40 instances)" in out, out + err
    assert db_rows(url)[3] == 40


def test_an_archive_lost_mid_retrieval_fails_that_study_and_a_rerun_completes(
    tmp_path: Path,
) -> None:
    files = dated(ct_series(tmp_path / "ct", 30), "20261005")
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality()}) as pacs:
        pacs.upload(files)
        config, url = write_node_config(tmp_path, pacs)

        def crash_once_arriving() -> None:
            wait_until(lambda: partly_held(tmp_path / "node.db", 30, 0), 120, "instances")
            pacs.process.kill()

        crash = threading.Thread(target=crash_once_arriving)
        crash.start()
        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
        crash.join(timeout=130)
        assert status == 1, out + err
        assert "association lost during C-GET" in out and "refused" not in out + err
        assert db_rows(url)[2][0].state == BackfillState.FAILED
        with outage(pacs) as restart:
            restart()
            status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert status == 0 and "retrieved 1, routed 1 (1 job(s), 30 instances)" in out, out + err


def test_c_move_to_the_running_listener(tmp_path: Path) -> None:
    files = dated(ct_series(tmp_path / "ct", 3), "20261005")
    port = get_free_port()
    with run_orthanc(tmp_path, extra={"DicomModalities": node_modality(port)}) as pacs:
        pacs.upload(files)
        peer = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        config, url = write_node_config(
            tmp_path,
            pacs,
            port=port,
            peers=[{**peer, "retrieve": "move"}],
            # The backfill completes the study; the node's quiet timer must not first.
            completion={"stable_seconds": 600},
        )
        with run_node(config, role="listener", port=port):
            status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert status == 0, out + err
    assert "listener must be running" in err
    assert "retrieved 1, routed 1 (1 job(s), 3 instances)" in out
    studies, jobs, _, held = db_rows(url)
    assert held == 3 and len(jobs) == 1
    assert studies[0].completion_reason == "backfill: C-MOVE of 3/3 instances"
    assert studies[0].calling_ae_title == "ORTHANC"


def test_an_archive_that_caps_its_answers_is_asked_one_day_at_a_time(tmp_path: Path) -> None:
    extra = {"DicomModalities": node_modality(), "LimitFindResults": 2}
    with run_orthanc(tmp_path, extra=extra) as pacs:
        for day in (1, 2, 3):
            pacs.upload(dated(ct_series(tmp_path / f"day{day}", 1), f"2026100{day}"))
        config, _ = write_node_config(tmp_path, pacs)
        in_october = ("--peer", "pacs", *IN_RANGE, "--json")
        status, out, err = backfill(config, *in_october)
        assert status == 0 and json.loads(out)["routed"] == 3, out + err
        for extra_study in range(2):  # three studies on one day: more than the cap
            pacs.upload(dated(ct_series(tmp_path / f"more{extra_study}", 1), "20261001"))
        status, out, err = backfill(config, *in_october)
    assert status == 1, out + err
    assert "C-FIND refused by pacs (ORTHANC): status 0xFE00" in err
    assert "cut short after 2 match(es)" in err and "LimitFindResults" in err


def test_a_dicomweb_archive_by_qido_and_wado(tmp_path: Path) -> None:
    october = dated(ct_series(tmp_path / "ct", 3), "20261005")
    september = dated(ct_series(tmp_path / "old", 2), "20260920")
    with run_orthanc(tmp_path, dicomweb=True) as pacs:
        pacs.upload([*october, *september])
        peer = {"name": "pacs", "kind": "dicomweb", "url": pacs.dicomweb_url}
        routes = [
            {
                "name": "ct",
                "models": ["demo-ct-bone"],
                "match": {"Modality": "CT"},
                "destinations": ["pacs"],
            }
        ]
        config, url = write_node_config(tmp_path, pacs, peers=[peer], routes=routes)
        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
        assert status == 0, out + err
        status, again, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert "retrieved 1, routed 1 (1 job(s), 3 instances)" in out
    assert status == 0 and "retrieved 0, routed 0" in again
    studies, jobs, rows, held = db_rows(url)
    assert [s.study_instance_uid for s in studies] == [study_uid(october)]
    assert studies[0].completion_reason == "backfill: WADO-RS of 3/3 instances"
    assert held == 3 and len(jobs) == 1 and rows[0].state == BackfillState.ROUTED
    spooled = sorted((tmp_path / "storage" / "instances").rglob("*.dcm"))
    assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in spooled} == {
        str(pydicom.dcmread(p).SOPInstanceUID) for p in october
    }
    assert not [p for p in (tmp_path / "storage" / "incoming").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("retrieve", "permissions", "refused", "advice"),
    [
        ("get", None, "C-FIND refused by pacs (ORTHANC): no status", "AllowFind"),
        ("get", {"AllowGet": False}, "C-GET refused by pacs (ORTHANC): no status", "AllowGet"),
        ("move", {"AllowMove": False}, "C-MOVE refused by pacs (ORTHANC): no status", "AllowMove"),
        # Allowed, but nothing listens at the node's port: Orthanc cannot move there.
        ("move", {}, "C-MOVE refused by pacs (ORTHANC): status 0xC000", "listener running"),
    ],
)
def test_a_refusing_archive_stops_the_backfill_with_what_to_configure(
    tmp_path: Path,
    retrieve: str,
    permissions: dict[str, bool] | None,
    refused: str,
    advice: str,
) -> None:
    files = dated(ct_series(tmp_path / "ct", 2), "20261005")
    modalities = node_modality(get_free_port(), **permissions) if permissions is not None else {}
    with run_orthanc(tmp_path, extra={"DicomModalities": modalities}) as pacs:
        pacs.upload(files)
        peer = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        config, url = write_node_config(tmp_path, pacs, peers=[{**peer, "retrieve": retrieve}])
        status, out, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01")
    assert status == 1, out + err
    assert refused in err and advice in err and "DicomModalities" in err
    _, jobs, rows, held = db_rows(url)
    assert jobs == [] and held == 0
    if not refused.startswith("C-FIND"):
        assert [(r.state, refused in (r.reason or "")) for r in rows] == [
            (BackfillState.FAILED, True)
        ]


def test_bad_arguments(tmp_path: Path) -> None:
    config, _ = write_node_config(tmp_path, pacs=None)
    status, _, err = backfill(config, "--peer", "nobody", "--since", "2026-10-01")
    assert status == 2 and "no peer named 'nobody'" in err
    status, _, err = backfill(config, "--peer", "pacs", "--since", "2026-10-01", "--route", "x")
    assert status == 2 and "no route named 'x' (routes: ct, radiographs)" in err
    status, _, err = backfill(
        config, "--peer", "pacs", "--since", "2026-11-01", "--until", "2026-10-01"
    )
    assert status == 2 and "before --since" in err
    with pytest.raises(SystemExit), redirect_stderr(io.StringIO()):
        build_parser().parse_args(["backfill", "-c", "x", "--peer", "p", "--since", "01/10/2026"])
