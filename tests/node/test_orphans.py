"""Spool files no row knows about: indexed when valid and old enough, removed otherwise."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.schema import Instance, Study
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.intake import orphans
from dicom_node.intake.orphans import reconcile_orphans
from dicom_node.intake.spool import Spool
from tests.orchestration.studies import ct_series

GRACE_S = 60.0


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    yield Spool(tmp_path / "storage")


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'node.db'}")
    yield session_factory(engine)
    engine.dispose()


def place(
    spool: Spool, source: Path, *, at: Path | None = None, age_s: float = 2 * GRACE_S
) -> Path:
    """Copy ``source`` into the spool (at its UIDs' path unless ``at``), ``age_s`` old."""
    if at is None:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        at = spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    at.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, at)
    stamp = time.time() - age_s
    os.utime(at, (stamp, stamp))
    return at


def test_old_valid_orphan_is_indexed_and_others_removed_or_left(
    spool: Spool, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))
    mr = Path(get_testdata_file("MR_small.dcm"))
    orphan = place(spool, ct)
    recent = place(spool, mr, age_s=0)
    garbage = place(spool, ct, at=spool.instances_dir / "x" / "y" / "garbage.dcm")
    garbage.write_bytes(b"not DICOM at all")
    os.utime(garbage, (time.time() - 2 * GRACE_S,) * 2)
    misplaced = place(spool, ct, at=spool.instances_dir / "a" / "b" / "c.dcm")

    report = reconcile_orphans(sessions, spool, GRACE_S)

    assert (report.indexed, report.removed) == (1, 2)
    assert orphan.exists() and recent.exists()
    assert not garbage.exists() and not misplaced.exists()
    with sessions() as session:
        assert list(session.scalars(select(Instance.path))) == [str(orphan)]
        study = session.scalars(select(Study)).one()
    assert study.study_instance_uid == str(pydicom.dcmread(ct).StudyInstanceUID)
    logged = {r.message: r for r in caplog.records if r.name == "dicom_node.intake.orphans"}
    assert logged["orphan spool file indexed"].path == str(orphan)  # type: ignore[attr-defined]
    reasons = sorted(
        str(r.reason)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "orphan spool file removed"
    )
    assert reasons[0].startswith("dataset does not parse"), reasons
    assert reasons[1].startswith("not at the spool path of its UIDs"), reasons
    # Indexed once: a second pass finds nothing left to do.
    assert reconcile_orphans(sessions, spool, GRACE_S) == type(report)(0, 0)


def test_study_folders_removed_by_retention_during_the_walk_are_skipped(
    spool: Spool, sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(3):
        [source] = ct_series(tmp_path / f"study{number}", 1)
        place(spool, source)
    real_unknown = orphans._unknown

    def unknown_while_retention_runs(db: sessionmaker[Session], paths: list[Path]) -> list[Path]:
        """The first batch's files; meanwhile retention removes every other study folder."""
        kept = {path.relative_to(spool.instances_dir).parts[0] for path in paths}
        for folder in spool.instances_dir.iterdir():
            if folder.name not in kept:
                shutil.rmtree(folder)
        return real_unknown(db, paths)

    monkeypatch.setattr(orphans, "BATCH_FILES", 1)
    monkeypatch.setattr(orphans, "_unknown", unknown_while_retention_runs)

    assert reconcile_orphans(sessions, spool, GRACE_S) == orphans.OrphanReport(indexed=1, removed=0)
