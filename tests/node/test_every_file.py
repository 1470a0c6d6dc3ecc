"""Every DICOM file bundled with pydicom, pydicom-data and pynetdicom, sent one by one to a
running node: each gets an answer, the node stays up, and what it accepts is stored
byte for byte as sent (apart from the file meta it writes)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from dicom_node.db.schema import Instance
from dicom_node.net.scu import echo, send_files
from tests.node.conftest import SENDER, NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
FOLDERS = [
    PYDICOM_DATA / "test_files",
    PYDICOM_DATA / "charset_files",
    Path(pydicom.__file__).parent.parent / "data_store" / "data",
    Path(pynetdicom.__file__).parent / "tests" / "dicom_files",
]


def storable(path: Path) -> bool:
    """A Part 10 file with what a C-STORE request needs: SOP Class and Instance UIDs and
    the transfer syntax its dataset is encoded in."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = read_file_meta_info(path)
            needed = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
            return all(keyword in meta for keyword in needed)
    except Exception:
        return False


STORAGE_CLASSES = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


def supported(path: Path) -> bool:
    """Whether the listener offers the file's SOP class and transfer syntax."""
    meta = read_file_meta_info(path)
    return (
        meta.MediaStorageSOPClassUID in STORAGE_CLASSES
        and meta.get("TransferSyntaxUID") in AllTransferSyntaxes
    )


def bundled_files() -> list[Path]:
    files = sorted(p for folder in FOLDERS if folder.is_dir() for p in folder.rglob("*"))
    return [p for p in files if p.is_file() and storable(p)]


def body(path: Path) -> bytes:
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def well_formed(path: Path) -> bool:
    """pydicom reads it strictly (no force, no warning) and it has the three UIDs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = dcmread(path, stop_before_pixels=True)
            return (
                all(ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
                and ds.SOPInstanceUID == read_file_meta_info(path).MediaStorageSOPInstanceUID
            )
    except Exception:
        return False


def test_every_bundled_file(spawn_node: Callable[..., NodeProcess]) -> None:
    files = bundled_files()
    assert len(files) > 100, "pydicom and pynetdicom test files not found"
    node = spawn_node(node={"duplicate_policy": "replace"}, security={"allowed_calling_aets": []})
    sessions = node.sessions()
    unanswered, not_identical, refused_well_formed, identical = [], [], [], []
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom on the odd files, sender side
            [result] = send_files(SENDER, node.peer, [path])
        if result.status is None:
            if supported(path) or not result.reason.startswith("peer accepted no context"):
                unanswered.append(f"{path.name}: {result.reason}")
            continue  # else refused at association: not a storage SOP class we know
        if not well_formed(path):
            continue
        if not result.ok:
            refused_well_formed.append(f"{path.name}: 0x{result.status:04X}")
            continue
        with sessions() as session:
            stored = session.scalar(
                select(Instance.path).where(Instance.sop_instance_uid == result.sop_instance_uid)
            )
        if stored is None or body(Path(stored)) != body(path):
            not_identical.append(path.name)
        else:
            identical.append(path.name)
    assert node.process.poll() is None, node.log()[-3000:]
    assert echo(SENDER, node.peer) == 0
    assert not unanswered, unanswered
    assert not refused_well_formed, refused_well_formed
    assert not not_identical, not_identical
    print(f"{len(files)} files sent, {len(identical)} well-formed stored byte-identical")
    assert len(identical) > 100
