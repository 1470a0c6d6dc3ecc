"""Delivery over STOW-RS: result files to a DICOMweb peer in requests, one outcome per file.

The files of a claimed batch go out as few multipart/related STOW-RS requests as
``max_request_mb`` allows (each file is read and held only for its request). Every
file's outcome is a :class:`~dicom_node.store_outcome.StoreResult`, under the same
rules as a C-STORE:

- listed in the response's ReferencedSOPSequence: stored (a WarningReason is kept as
  its status);
- listed in its FailedSOPSequence: the FailureReason is a C-STORE status, classified
  like one (0xA7xx out of resources is transient; 0xA900, 0xC000, 0x0122 ... are
  permanent for that object), the reason kept. Archives list outcomes with 200, 202,
  409 and (Orthanc) 400 answers alike;
- not listed: stored after 200 (the standard's "all stored"), transient after 202;
  after an error status, as that status says:
- HTTP 5xx, 408, 425, 429 (Retry-After kept), a timeout, no connection, no
  credentials: transient, and after such a failure of a whole request the rest of the
  batch is not tried;
- any other HTTP 4xx: permanent, with the status line and the start of the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests
from pydicom import Dataset, dcmread

from dicom_node.net.dicomweb_auth import DicomwebConnector, DicomwebError
from dicom_node.net.store_outcome import Outcome, StoreResult, classify_status, transient

logger = logging.getLogger(__name__)

# Besides every 5xx: Request Timeout, Too Early, Too Many Requests.
TRANSIENT_HTTP = frozenset({408, 425, 429})
_EXCERPT = 200

Progress = Callable[[Path, StoreResult], None]


@dataclass(frozen=True)
class _Part:
    path: Path
    sop_instance_uid: str
    dataset: Dataset


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def printable(text: str) -> str:
    """The peer's text made safe for one log line and one database column."""
    return "".join(c if c.isprintable() else " " for c in text)[:_EXCERPT].strip()


def classify_http(response: requests.Response) -> StoreResult:
    """The outcome of a whole STOW-RS request answered with an HTTP error status."""
    status = response.status_code
    meaning = f"HTTP {status} {printable(response.reason or '')}".strip()
    detail = printable(response.text or "")
    if detail:
        meaning += f": {detail}"
    if status >= 500 or status in TRANSIENT_HTTP:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return StoreResult(Outcome.TRANSIENT, None, meaning, retry_after)
    return StoreResult(Outcome.PERMANENT, None, meaning)


def response_dataset(response: requests.Response) -> Dataset | None:
    """The STOW-RS response body as a dataset (DICOM JSON); None when there is none.

    A body without a Content-Type is tried as JSON too: Orthanc sends its error answers
    (which list every instance's outcome) without one.
    """
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not response.content or media_type not in {"", "application/dicom+json", "application/json"}:
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
        logger.warning(
            "STOW-RS response is not DICOM JSON",
            extra={"excerpt": printable(response.text)},
        )
        return None


def _listed(dataset: Dataset, keyword: str) -> dict[str, Dataset]:
    items = dataset.get(keyword) or []
    return {str(item.get("ReferencedSOPInstanceUID", "")): item for item in items}


def outcomes(
    dataset: Dataset | None, uids: Sequence[str], unlisted: StoreResult
) -> list[StoreResult]:
    """Per-instance outcomes from a STOW-RS response body, in ``uids`` order; an
    instance the body does not list gets ``unlisted``."""
    dataset = dataset or Dataset()
    stored = _listed(dataset, "ReferencedSOPSequence")
    failed = _listed(dataset, "FailedSOPSequence")
    results = []
    for uid in uids:
        if uid in failed:
            results.append(_failure(failed[uid]))
        elif uid in stored:
            warning = stored[uid].get("WarningReason")
            results.append(StoreResult(Outcome.STORED, int(warning or 0), "stored"))
        else:
            results.append(unlisted)
    return results


def _failure(item: Dataset) -> StoreResult:
    """A FailedSOPSequence item: its FailureReason is a C-STORE status."""
    if "FailureReason" not in item:
        return StoreResult(Outcome.PERMANENT, None, "STOW-RS failure without a FailureReason")
    reason = int(item.FailureReason)
    result = classify_status(reason)
    if result.outcome is Outcome.STORED:  # a "failure" with a success code
        return StoreResult(Outcome.PERMANENT, reason, result.meaning)
    return result


def _unlisted(response: requests.Response) -> StoreResult:
    """The outcome of an instance the response body does not mention."""
    if response.status_code == 200:  # the standard's "all stored"
        return StoreResult(Outcome.STORED, 0, "stored")
    if response.ok:
        return transient(f"HTTP {response.status_code}: the response does not list it")
    return classify_http(response)


def _read(path: Path) -> _Part | StoreResult:
    try:
        dataset = dcmread(path)
        return _Part(path, str(dataset.SOPInstanceUID), dataset)
    except Exception as exc:  # pydicom raises many kinds on a missing or corrupt file
        return StoreResult(Outcome.PERMANENT, None, f"not a DICOM file: {type(exc).__name__}")


def _requests(paths: Sequence[Path], max_bytes: int) -> Iterator[list[Path]]:
    """``paths`` in groups whose files add up to at most ``max_bytes`` (at least one each)."""
    group: list[Path] = []
    size = 0
    for path in paths:
        try:
            length = path.stat().st_size
        except OSError:
            length = 0  # reported as unreadable when read
        if group and size + length > max_bytes:
            yield group
            group, size = [], 0
        group.append(path)
        size += length
    if group:
        yield group


def _post(connector: DicomwebConnector, parts: list[_Part]) -> list[StoreResult]:
    """One STOW-RS request; an outcome per part."""
    answers: list[requests.Response] = []

    def keep(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        answers.append(response)
        return response

    try:
        with connector.client(response_hook=keep) as client:
            client.store_instances([part.dataset for part in parts])
    except DicomwebError as exc:
        return [transient(exc.reason)] * len(parts)
    except requests.HTTPError:
        pass  # the answer is in ``answers``: some archives list per-instance outcomes
    except requests.Timeout as exc:
        return [transient(f"timed out: {type(exc).__name__}")] * len(parts)
    except requests.RequestException as exc:
        return [transient(f"no connection: {printable(str(exc))}")] * len(parts)
    if not answers:
        return [transient("no HTTP response")] * len(parts)
    response = answers[-1]
    uids = [part.sop_instance_uid for part in parts]
    return outcomes(response_dataset(response), uids, _unlisted(response))


def store_files(connector: DicomwebConnector, paths: Sequence[Path], progress: Progress) -> None:
    """STOW-RS ``paths`` to the connector's peer; ``progress(path, result)`` once per file.

    Never raises for the peer's sake: every failure is an outcome. After a transient
    failure of a whole request (peer down, overloaded, timing out) the files not yet
    sent get the same outcome without being tried.
    """
    max_bytes = int(connector.peer.max_request_mb * 1024 * 1024)
    unsent: StoreResult | None = None
    for group in _requests(paths, max_bytes):
        if unsent is not None:
            for path in group:
                progress(path, unsent)
            continue
        parts: list[_Part] = []
        for path in group:
            read = _read(path)
            if isinstance(read, StoreResult):
                progress(path, read)
            else:
                parts.append(read)
        if not parts:
            continue
        results = _post(connector, parts)
        for part, result in zip(parts, results, strict=True):
            progress(part.path, result)
        if all(r.outcome is Outcome.TRANSIENT and r.status is None for r in results):
            unsent = results[0]
