"""WADO-RS: fetching a study (or some of its series) from a DICOMweb peer, one instance at
a time (the multipart answer is streamed and each instance written as it is decoded):
into a folder for an administrator's checks, or into the node through the listener's
store path for the backfill."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from dicom_node.net.dicomweb_auth import DicomwebConnector
from dicom_node.net.dicomweb_query import dicomweb_call
from dicom_node.net.query_retrieve import Retrieval
from dicom_node.net.scp import SUCCESS, StoreHandler

logger = logging.getLogger(__name__)


def _write(dataset: Dataset, folder: Path, name: str) -> Path:
    """``folder/name`` whole or not at all (a temp name, then renamed)."""
    path = folder / name
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def iter_instances(
    connector: DicomwebConnector,
    study_uid: str,
    folder: Path,
    series_uids: Sequence[str] | None = None,
) -> Iterator[Path]:
    """Write each instance of ``study_uid`` (of ``series_uids`` only, when given) as
    ``folder/NNNNN.dcm`` and yield its path as soon as it is whole.

    Raises
    ------
    DicomwebError
        When the peer cannot be reached or answers with an error status; the files
        yielded until then stay.
    OSError
        When ``folder`` cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    with connector.client() as client:
        requests: list[tuple[str, Callable[[], Iterator[Dataset]]]] = (
            [("WADO-RS study", partial(client.iter_study, study_uid))]
            if series_uids is None
            else [
                ("WADO-RS series", partial(client.iter_series, study_uid, uid))
                for uid in series_uids
            ]
        )
        for what, fetch in requests:
            instances = dicomweb_call(connector, what, fetch)
            read = partial(next, instances, None)
            while (dataset := dicomweb_call(connector, what, read)) is not None:
                yield _write(dataset, folder, f"{written:05d}.dcm")
                written += 1


def retrieve_study(connector: DicomwebConnector, study_uid: str, folder: Path) -> list[Path]:
    """Write every instance of ``study_uid`` as ``folder/NNNNN.dcm``; their paths.

    Raises
    ------
    DicomwebError
        When the peer cannot be reached or answers with an error status; the files
        written until then stay.
    OSError
        When ``folder`` cannot be written.
    """
    paths = list(iter_instances(connector, study_uid, folder))
    logger.info(
        "study retrieved by WADO-RS",
        extra={"peer": connector.peer.name, "study_uid": study_uid, "instances": len(paths)},
    )
    return paths


def retrieve_into(
    connector: DicomwebConnector,
    handler: StoreHandler,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
) -> Retrieval:
    """WADO-RS a study (or some of its series) into the node: each instance is written to
    the spool's ``incoming/`` folder and stored by ``handler`` as a C-STORE would be
    (fsync, rename into the spool, catalog row), then removed from ``incoming/``.

    Raises
    ------
    DicomwebError
        When the peer cannot be reached or answers with an error status; the instances
        stored until then stay.
    """
    retrieval = Retrieval()
    for path in iter_instances(connector, study_uid, handler.spool.incoming_dir, series_uids):
        try:
            meta = read_file_meta_info(path)
            sop_uid = str(meta.MediaStorageSOPInstanceUID)
            log = {"study_uid": study_uid, "sop_uid": sop_uid, "via": "WADO-RS"}
            with handler.tracked():
                status = handler.store_file(
                    path, str(meta.TransferSyntaxUID), None, sop_uid, log, study_uid=study_uid
                )
        finally:
            path.unlink(missing_ok=True)  # moved into the spool when stored
        if status == SUCCESS:
            retrieval.completed += 1
        else:
            retrieval.failed += 1
            retrieval.failed_uids.append(sop_uid)
            retrieval.statuses.append(status)
    return retrieval
