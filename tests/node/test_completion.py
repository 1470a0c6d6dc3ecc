"""Study completion from the database: quiet timer, C-FIND evidence, restarts, races."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import CompletionSection, PeerConfig
from dicom_node.db.schema import Study, StudyState, utcnow
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.intake.catalog import ReceivedInstance, record_instance
from dicom_node.intake.completion import CompletionScanner
from dicom_node.intake.headers import InstanceHeaders
from dicom_node.net.scu import AssociationError, StudyCounts

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=utcnow().tzinfo)
SETTINGS = CompletionSection(stable_seconds=30, min_seconds=5, max_seconds=900)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return session_factory(create_db_engine(f"sqlite:///{tmp_path / 'node.db'}"))


def receive(
    sessions: sessionmaker[Session], study: str, series: str, at: datetime, count: int = 1
) -> None:
    for _ in range(count):
        headers = InstanceHeaders(study, series, generate_uid(), "1.2.840.10008.5.1.4.1.1.2")
        record_instance(
            sessions, ReceivedInstance(headers, "1.2.840.10008.1.2.1", "/x.dcm", 1, "PACS", at)
        )


def state(sessions: sessionmaker[Session], study: str) -> tuple[StudyState, str | None]:
    with sessions() as session:
        row = session.scalars(select(Study).where(Study.study_instance_uid == study)).one()
        return row.state, row.completion_reason


def test_quiet_timer(sessions: sessionmaker[Session]) -> None:
    clock, study = Clock(), generate_uid()
    receive(sessions, study, generate_uid(), clock.now, 3)
    scanner = CompletionScanner(sessions, SETTINGS, clock=clock)
    clock.advance(29)
    assert scanner.scan() == []
    clock.advance(1)
    [decision] = scanner.scan()
    assert decision.reason == "quiet for 30 s"
    assert state(sessions, study) == (StudyState.COMPLETE, "quiet for 30 s")
    assert scanner.scan() == []  # recorded: neither repeated nor lost


def test_completion_survives_restart_and_catches_up(sessions: sessionmaker[Session]) -> None:
    clock, study = Clock(), generate_uid()
    receive(sessions, study, generate_uid(), clock.now)
    clock.advance(3600)  # the node was down while the quiet time passed
    restarted = CompletionScanner(sessions, SETTINGS, clock=clock)
    assert [d.study_instance_uid for d in restarted.scan()] == [study]
    assert CompletionScanner(sessions, SETTINGS, clock=clock).scan() == []


class FakePeer:
    """Counts as a C-FIND peer would answer them."""

    def __init__(self, counts: dict[str, StudyCounts] | None = None) -> None:
        self.counts = counts or {}
        self.asked: list[list[str]] = []
        self.down = False

    def __call__(self, study_uids: Sequence[str]) -> dict[str, StudyCounts]:
        self.asked.append(list(study_uids))
        if self.down:
            raise AssociationError(PeerConfig(name="pacs", ae_title="P", host="h", port=1), "down")
        return {uid: self.counts[uid] for uid in study_uids if uid in self.counts}


def test_counts_match_completes_before_the_quiet_timer(sessions: sessionmaker[Session]) -> None:
    clock, study, series = Clock(), generate_uid(), generate_uid()
    peer = FakePeer({study: StudyCounts(3, {series: 3})})
    scanner = CompletionScanner(sessions, SETTINGS, peer, clock=clock)
    receive(sessions, study, series, clock.now, 2)
    clock.advance(4)
    assert scanner.scan() == []
    assert peer.asked == []  # not before min_seconds
    clock.advance(2)
    assert scanner.scan() == []  # 2 of 3: keeps waiting, even past...
    with sessions() as session:
        assert session.scalar(select(Study.expected_instances)) == 3
    clock.advance(60)
    assert scanner.scan() == []  # ...the quiet timer
    receive(sessions, study, series, clock.now)
    clock.advance(5)
    [decision] = scanner.scan()
    assert decision.reason == "C-FIND counts match 3/3"


def test_series_counts_must_match_too(sessions: sessionmaker[Session]) -> None:
    clock, study, a, b = Clock(), generate_uid(), generate_uid(), generate_uid()
    peer = FakePeer({study: StudyCounts(2, {a: 1, b: 1})})
    scanner = CompletionScanner(sessions, SETTINGS, peer, clock=clock)
    receive(sessions, study, a, clock.now, 2)  # right total, wrong series
    clock.advance(10)
    assert scanner.scan() == []


def test_gives_up_after_max_seconds(sessions: sessionmaker[Session]) -> None:
    clock, study, series = Clock(), generate_uid(), generate_uid()
    peer = FakePeer({study: StudyCounts(200, {series: 200})})
    receive(sessions, study, series, clock.now, 3)
    scanner = CompletionScanner(sessions, SETTINGS, peer, clock=clock)
    clock.advance(899)
    assert scanner.scan() == []
    clock.advance(1)
    [decision] = scanner.scan()
    assert decision.reason == "gave up waiting after 900 s: 3/200"


@pytest.mark.parametrize("down", [True, False], ids=["peer down", "study unknown"])
def test_no_counts_falls_back_to_quiet_timer(sessions: sessionmaker[Session], down: bool) -> None:
    clock, study = Clock(), generate_uid()
    peer = FakePeer()
    peer.down = down
    receive(sessions, study, generate_uid(), clock.now)
    scanner = CompletionScanner(sessions, SETTINGS, peer, clock=clock)
    clock.advance(10)
    assert scanner.scan() == []
    clock.advance(20)
    [decision] = scanner.scan()
    assert decision.reason == "quiet for 30 s"


def test_instance_arriving_during_the_scan_wins(sessions: sessionmaker[Session]) -> None:
    clock, study, series = Clock(), generate_uid(), generate_uid()
    receive(sessions, study, series, clock.now)
    clock.advance(40)

    def late_instance(study_uids: Sequence[str]) -> dict[str, StudyCounts]:
        receive(sessions, study, series, clock.now)  # arrives while we ask the peer
        return {}

    scanner = CompletionScanner(sessions, SETTINGS, late_instance, clock=clock)
    assert scanner.scan() == []
    assert state(sessions, study) == (StudyState.RECEIVING, None)
