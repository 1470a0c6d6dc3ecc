"""The listener in-process, with a real pynetdicom SCU: store, refuse, keep serving."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, generate_uid
from pynetdicom.dsutils import split_dataset
from sqlalchemy import func, select

from dicom_node.db.schema import Instance, Series, Study, StudyState
from dicom_node.intake import spool as spool_module
from dicom_node.intake.completion import CompletionScanner
from dicom_node.intake.headers import read_headers
from dicom_node.net import scp as scp_module
from dicom_node.net.scu import AssociationError, LocalAE, echo, send_files
from tests.node.conftest import SENDER, RunningNode, rows, scalar, wait_for, write_series

StartNode = Callable[..., RunningNode]


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_echo(start_node: StartNode) -> None:
    node = start_node()
    assert echo(SENDER, node.peer) == 0x0000


def test_store_writes_raw_bytes_and_indexes_them(start_node: StartNode) -> None:
    node = start_node()
    source = Path(get_testdata_file("CT_small.dcm"))
    [result] = send_files(SENDER, node.peer, [source])
    assert result.status == 0x0000
    ds = dcmread(source)
    [instance] = rows(node.sessions, select(Instance))
    stored = Path(instance.path)
    assert stored.is_relative_to(node.config.node.storage_dir / "instances")
    assert stored.parts[-3:-1] == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert dataset_bytes(stored) == dataset_bytes(source)
    assert dcmread(stored).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert instance.size_bytes == stored.stat().st_size
    assert instance.sop_class_uid == ds.SOPClassUID
    assert instance.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert instance.calling_ae_title == SENDER.ae_title
    [series] = rows(node.sessions, select(Series))
    assert series.modality == "CT"
    assert series.routing_fields["Modality"] == "CT"
    assert series.routing_fields["SliceThickness"] == str(ds.SliceThickness)
    assert series.routing_fields["ImageType"] == "\\".join(ds.ImageType)
    [study] = rows(node.sessions, select(Study))
    assert (study.state, study.instance_count, study.generation) == (StudyState.RECEIVING, 1, 0)
    assert study.patient_id == ds.PatientID
    assert [p for p in (node.config.node.storage_dir / "incoming").rglob("*") if p.is_file()] == []


def test_calling_ae_not_allowed_is_rejected(
    start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    # The node answers A-ASSOCIATE-RJ and closes; a busy requestor may see the close first.
    with pytest.raises(AssociationError, match=r"rejected|aborted"):
        echo(LocalAE(ae_title="INTRUDER", timeout=5), node.peer)
    assert wait_for(
        lambda: any(
            r.message.startswith("association rejected") and r.calling_aet == "INTRUDER"
            for r in caplog.records
        ),
        timeout=5,
    )


def test_client_address_not_allowed_is_refused(start_node: StartNode) -> None:
    node = start_node(security={"allowed_hosts": ["10.0.0.0/8"]})
    with pytest.raises(AssociationError, match="no association"):
        echo(SENDER, node.peer)


def test_client_address_in_allowed_network(start_node: StartNode) -> None:
    node = start_node(security={"allowed_hosts": ["127.0.0.0/8"]})
    assert echo(SENDER, node.peer) == 0


def test_free_disk_floor_answers_out_of_resources(start_node: StartNode) -> None:
    node = start_node(node={"min_free_disk_mb": 1 << 40})
    [result] = send_files(SENDER, node.peer, [Path(get_testdata_file("CT_small.dcm"))])
    assert result.status == 0xA700
    assert scalar(node.sessions, select(func.count(Instance.id))) == 0
    assert echo(SENDER, node.peer) == 0  # still serving


def _variant(tmp_path: Path, name: str, **changes: object) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=False)
    return path


def test_bad_input_gets_failure_status_and_listener_keeps_serving(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node()
    no_study = _variant(tmp_path, "nostudy.dcm", StudyInstanceUID=None)
    mismatch = _variant(tmp_path, "mismatch.dcm")
    ds = dcmread(mismatch)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the C-STORE request's UID
    ds.save_as(mismatch, enforce_file_format=False)
    garbage = _variant(tmp_path, "garbage.dcm")
    _meta, offset = split_dataset(garbage)
    # A sequence of undefined length whose items are junk: pydicom cannot parse it.
    junk = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x01" * 40
    garbage.write_bytes(garbage.read_bytes()[:offset] + junk)
    good = Path(get_testdata_file("MR_small.dcm"))
    results = send_files(SENDER, node.peer, [no_study, mismatch, garbage, good])
    assert [r.status for r in results] == [0xC220, 0xC222, 0xC210, 0x0000]
    assert scalar(node.sessions, select(func.count(Instance.id))) == 1
    assert echo(SENDER, node.peer) == 0


@pytest.mark.parametrize("policy", ["keep_first", "replace"])
def test_resent_instance_is_stored_once(start_node: StartNode, tmp_path: Path, policy: str) -> None:
    node = start_node(node={"duplicate_policy": policy})
    first = Path(get_testdata_file("CT_small.dcm"))
    second = _variant(tmp_path, "second.dcm", SeriesDescription="resent with a change")
    results = send_files(SENDER, node.peer, [first, second])
    assert [r.status for r in results] == [0, 0]
    [instance] = rows(node.sessions, select(Instance))
    expected = first if policy == "keep_first" else second
    assert dataset_bytes(Path(instance.path)) == dataset_bytes(expected)
    assert scalar(node.sessions, select(Study.instance_count)) == 1
    assert len(list((node.config.node.storage_dir / "instances").rglob("*.dcm"))) == 1


def test_instance_after_completion_reopens_study(start_node: StartNode, tmp_path: Path) -> None:
    node = start_node()
    first, second = write_series(tmp_path / "series", 2)
    assert send_files(SENDER, node.peer, [first])[0].ok
    scanner = CompletionScanner(
        node.sessions, node.config.completion.model_copy(update={"stable_seconds": 0})
    )
    [decision] = scanner.scan()
    assert decision.reason == "quiet for 0 s"
    assert send_files(SENDER, node.peer, [second])[0].ok
    [study] = rows(node.sessions, select(Study))
    assert (study.state, study.generation, study.instance_count) == (StudyState.RECEIVING, 1, 2)
    assert study.completed_at is None
    [decision] = scanner.scan()
    assert scalar(node.sessions, select(Study.state)) == StudyState.COMPLETE


CHARSET_FILES = ["chrH31.dcm", "chrKoreanMulti.dcm", "chrX1.dcm", "chrX2.dcm", "chrRuss.dcm"]


def test_headers_decoded_with_the_datasets_character_set(start_node: StartNode) -> None:
    node = start_node()
    paths = [Path(get_charset_files(name)[0]) for name in CHARSET_FILES]
    results = send_files(SENDER, node.peer, paths)
    assert all(r.ok for r in results), results
    with node.sessions() as session:
        for path in paths:
            ds = dcmread(path)
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID)
            ).one()
            assert study.patient_name == str(ds.PatientName), path.name
            stored = session.scalars(
                select(Instance.path).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
            ).one()
            assert dataset_bytes(Path(stored)) == dataset_bytes(path)


def test_private_sop_class_only_when_configured(start_node: StartNode, tmp_path: Path) -> None:
    private = "1.2.826.0.1.3680043.8.498.777"
    path = _variant(tmp_path, "private.dcm", SOPClassUID=private)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = private
    ds.save_as(path, enforce_file_format=True)
    plain = start_node()
    [refused] = send_files(SENDER, plain.peer, [path])
    assert refused.status is None
    assert refused.reason == f"peer accepted no context for {private} in {ExplicitVRLittleEndian}"
    configured = start_node(node={"private_sop_classes": [private]})
    [stored] = send_files(SENDER, configured.peer, [path])
    assert stored.status == 0
    assert scalar(configured.sessions, select(Instance.sop_class_uid)) == private


def test_htj2k_accepted_as_sent(start_node: StartNode, tmp_path: Path) -> None:
    # A JPEG 2000 Part 1 codestream is valid in HTJ2K Lossless (HTJ2K decoders read both).
    ds = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    node = start_node()
    [result] = send_files(SENDER, node.peer, [path])
    assert result.status == 0
    [instance] = rows(node.sessions, select(Instance))
    assert instance.transfer_syntax_uid == HTJ2KLossless
    stored = dcmread(instance.path)
    assert stored.file_meta.TransferSyntaxUID == HTJ2KLossless
    assert dataset_bytes(Path(instance.path)) == dataset_bytes(path)
    assert stored.pixel_array.shape == (ds.Rows, ds.Columns)


def test_keep_first_keeps_an_instance_resent_under_other_study_uids(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(node={"duplicate_policy": "keep_first"})
    first = Path(get_testdata_file("CT_small.dcm"))
    moved = _variant(tmp_path, "moved.dcm", StudyInstanceUID=generate_uid())
    assert [r.status for r in send_files(SENDER, node.peer, [first, moved])] == [0, 0]
    [instance] = rows(node.sessions, select(Instance))
    assert dataset_bytes(Path(instance.path)) == dataset_bytes(first)
    assert scalar(node.sessions, select(Study.instance_count)) == 1
    # The second copy's own spool name, which no row names, is not left behind.
    assert len(list((node.config.node.storage_dir / "instances").rglob("*.dcm"))) == 1


def test_a_failed_fsync_answers_out_of_resources_and_records_nothing(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    path = Path(get_testdata_file("CT_small.dcm"))

    def failing_fsync(fd: int) -> None:
        os.close(fd)
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(spool_module, "_fsync_and_close", failing_fsync)
        [result] = send_files(SENDER, node.peer, [path])
    assert result.status == 0xA700
    assert scalar(node.sessions, select(func.count(Instance.id))) == 0
    # The sender tries again once the disk is back: stored once, over the left-over file.
    [result] = send_files(SENDER, node.peer, [path])
    assert result.status == 0
    [instance] = rows(node.sessions, select(Instance))
    assert dataset_bytes(Path(instance.path)) == dataset_bytes(path)


def test_only_a_series_first_instance_gets_its_routing_fields_parsed(
    start_node: StartNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    full_reads: list[Path] = []

    def counting(path: Path, expected: str | None = None, *, series_fields: bool = True) -> Any:
        if series_fields:
            full_reads.append(path)
        return read_headers(path, expected, series_fields=series_fields)

    monkeypatch.setattr(scp_module, "read_headers", counting)
    paths = write_series(tmp_path / "series", 3)
    assert all(r.ok for r in send_files(SENDER, node.peer, paths))
    assert len(full_reads) == 1
    [series] = rows(node.sessions, select(Series))
    assert series.routing_fields["Rows"] == "128" and series.routing_fields["Modality"] == "CT"
    numbers = sorted(i.instance_number for i in rows(node.sessions, select(Instance)))
    assert numbers == [1, 2, 3] and series.instance_count == 3


def test_replace_moves_an_instance_resent_under_other_study_uids(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(node={"duplicate_policy": "replace"})
    first = Path(get_testdata_file("CT_small.dcm"))
    new_study = generate_uid()
    moved = _variant(tmp_path, "moved.dcm", StudyInstanceUID=new_study)
    assert [r.status for r in send_files(SENDER, node.peer, [first, moved])] == [0, 0]
    [instance] = rows(node.sessions, select(Instance))
    assert dataset_bytes(Path(instance.path)) == dataset_bytes(moved)
    counts = {s.study_instance_uid: s.instance_count for s in rows(node.sessions, select(Study))}
    assert counts == {dcmread(first).StudyInstanceUID: 0, new_study: 1}
    # The first copy's file, which no row names any more, is gone.
    assert list((node.config.node.storage_dir / "instances").rglob("*.dcm")) == [
        Path(instance.path)
    ]


@pytest.mark.parametrize("uid", ["1.2.03.4", "1.2.3\n4", "1.2..3", "1.2.3a"])
def test_a_value_that_is_not_a_uid_is_refused(
    start_node: StartNode, tmp_path: Path, uid: str
) -> None:
    node = start_node()
    with pydicom_config.disable_value_validation():
        path = _variant(tmp_path, "bad.dcm", SeriesInstanceUID=uid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom on the bad value, both sides
        [result] = send_files(SENDER, node.peer, [path])
    assert result.status == 0xC223
    assert scalar(node.sessions, select(func.count(Instance.id))) == 0
    assert not list((node.config.node.storage_dir / "instances").rglob("*.dcm"))
