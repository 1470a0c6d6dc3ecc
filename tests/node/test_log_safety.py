"""Log lines a network peer cannot forge, and no patient name at WARNING."""

from __future__ import annotations

import io
import logging
import re
import stat
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from highdicom.valuerep import check_person_name
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_node.log_safety import PerClientThrottle, escape_control
from dicom_node.logs import configure_logging
from dicom_node.net.scu import send_files
from tests.node.conftest import SENDER, NodeProcess
from tests.node.raw_peer import ASSOCIATE_RJ, associate_rq, connect, read_pdu

SpawnNode = Callable[..., NodeProcess]
# What a forged line would start with, and what every real one starts with.
FORGED = "2026-01-01 00:00:00,000 INFO dicom_node.net.scp forged"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture
def stderr_log() -> Iterator[io.StringIO]:
    """The node's logging configuration, writing into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("INFO")
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_escape_control_leaves_no_line_break() -> None:
    text = "A\nB\rC\tD\x1b[31mE\x85F\u2028G\x00"
    assert escape_control(text) == "A\\nB\\rC\\tD\\x1b[31mE\\x85F\\x2028G\\x00"
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", escape_control(text))


def test_every_part_of_a_record_is_one_line(stderr_log: io.StringIO) -> None:
    logger = logging.getLogger("dicom_node.test")
    logger.warning("refused %s", "X\n" + FORGED, extra={"calling_aet": "EVIL\n" + FORGED})
    logger.info("field", extra={"reason": 'a" status=0x0000 b'})
    try:
        raise ValueError("bad value\n" + FORGED)
    except ValueError:
        logger.exception("failed")
    lines = stderr_log.getvalue().splitlines()
    assert all(LOG_LINE.match(line) or line.startswith("  | ") for line in lines), lines
    assert not any(line.startswith(FORGED[:10]) for line in lines)
    assert sum(1 for line in lines if LOG_LINE.match(line)) == 3
    assert 'reason="a\\" status=0x0000 b"' in lines[1]  # no forged field either


def test_person_name_warning_stays_below_warning(stderr_log: io.StringIO) -> None:
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            check_person_name("DOE")
    finally:
        logging.captureWarnings(False)
    assert "DOE" not in stderr_log.getvalue()


def test_throttle_logs_once_per_client_and_interval() -> None:
    throttle = PerClientThrottle(interval=60)
    assert throttle.admit("refused", "10.0.0.1") == 0
    assert throttle.admit("refused", "10.0.0.1") is None
    assert throttle.admit("refused", "10.0.0.2") == 0
    assert throttle.admit("dropped", "10.0.0.1") == 0
    throttle.interval = 0
    assert throttle.admit("refused", "10.0.0.1") == 1  # one was not logged meanwhile


def _forged_file(tmp_path: Path, name: str, **uids: str) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    with pydicom_config.disable_value_validation():
        for keyword, value in uids.items():
            setattr(ds, keyword, value)
        if "SOPInstanceUID" in uids:
            ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=False)
    return path


@pytest.mark.slow
def test_uids_and_ae_titles_from_the_network_cannot_forge_log_lines(
    spawn_node: SpawnNode, tmp_path: Path
) -> None:
    node = spawn_node()
    newline_uid = _forged_file(tmp_path, "newline.dcm", SOPInstanceUID="1.2.3\n" + FORGED[:40])
    leading_zero = _forged_file(tmp_path, "zero.dcm", StudyInstanceUID="1.2.03.4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom and pynetdicom on the invalid UIDs
        results = send_files(SENDER, node.peer, [newline_uid, leading_zero])
    assert [r.status for r in results] == [0xC223, 0xC223]
    sock = connect(node.config.node.port)
    sock.sendall(associate_rq(calling=b"EVIL\n" + FORGED.encode()[:11]))
    answer = read_pdu(sock)
    sock.close()
    assert answer is not None and answer[0] == ASSOCIATE_RJ
    assert node.terminate() == 0
    lines = node.log().splitlines()
    assert all(LOG_LINE.match(line) or line.startswith("  | ") for line in lines), lines
    log = node.log()
    assert "calling_aet=EVIL\\n2026-01-01" in log
    assert "not a UID (digits and dots, no leading zeros)" in log


@pytest.mark.slow
def test_database_and_spool_are_not_readable_by_others(
    spawn_node: SpawnNode, tmp_path: Path
) -> None:
    node = spawn_node()
    [result] = send_files(SENDER, node.peer, [Path(get_testdata_file("CT_small.dcm"))])
    assert result.ok
    assert node.terminate() == 0
    spool = node.config.node.storage_dir
    created = [tmp_path / "node.db", spool, *spool.rglob("*")]
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in created}
    assert len(modes) > 5
    assert {path: mode for path, mode in modes.items() if mode & 0o007} == {}
