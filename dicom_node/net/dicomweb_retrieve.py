"""WADO-RS: fetching a whole study from a DICOMweb peer into a folder, one instance at a
time (the multipart answer is streamed and each instance written as it is decoded), for
the backfill and for an administrator's checks."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from dicom_node.net.dicomweb_auth import DicomwebConnector
from dicom_node.net.dicomweb_query import dicomweb_call

logger = logging.getLogger(__name__)


def retrieve_study(connector: DicomwebConnector, study_uid: str, folder: Path) -> list[Path]:
    """Write every instance of ``study_uid`` as ``folder/NNNNN.dcm``; their paths.

    Each file appears whole or not at all (written to a temp name, then renamed), so
    a retrieval cut off half-way leaves only complete instances behind.

    Raises
    ------
    DicomwebError
        When the peer cannot be reached or answers with an error status; the files
        written until then stay.
    OSError
        When ``folder`` cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with connector.client() as client:
        instances = dicomweb_call(connector, "WADO-RS study", lambda: client.iter_study(study_uid))
        while (
            dataset := dicomweb_call(connector, "WADO-RS study", lambda: next(instances, None))
        ) is not None:
            path = folder / f"{len(paths):05d}.dcm"
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as handle:
                    dataset.save_as(handle, enforce_file_format=True)
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            paths.append(path)
    logger.info(
        "study retrieved by WADO-RS",
        extra={"peer": connector.peer.name, "study_uid": study_uid, "instances": len(paths)},
    )
    return paths
