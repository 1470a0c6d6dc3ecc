"""A package's drift reference (``profile.json``), built by running it as the node does.

`dicom-node profile` builds one from any local studies, for a package that carries
none (an imported model); `dicom-node finetune --export` and `dicom-node export
--data` build one from the exported fold's validation studies, so that the reference
is what the shipped network gave on studies it was not trained on. Either way every
series goes through `inference.load_model(...).predict` and `series_findings`: the
record the worker keeps for every job, so that reference and window compare like
with like.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from dicom_node.work.drift import PROFILE_FILE, build_profile
from dicom_node.work.findings import series_findings
from inference import UnsupportedSeriesError, load_model

# Written by `dicom-node export` into every package it makes: the fold it shipped and
# the run's summary, which lists each fold's validation cases (study or series UIDs).
TRAINING_PROVENANCE = "training.json"


@dataclass(frozen=True)
class BuiltProfile:
    """Where a profile was written, and how many series it rests on."""

    path: Path
    series: int
    skipped: int  # series the model does not take

    def line(self) -> str:
        """What the commands print."""
        return (
            f"{self.path}: profile of {self.series} series ({self.skipped} the model does not take)"
        )


def dicom_series(root: Path, keys: Collection[str] | None = None) -> dict[str, list[Path]]:
    """The DICOM files under ``root`` by series (any layout; other files are passed
    over), only of the series or studies whose UID is in ``keys`` when given."""
    series: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        if uid and (keys is None or uid in keys or header.get("StudyInstanceUID") in keys):
            series[uid].append(path)
    return dict(series)


def build_package_profile(
    package: Path,
    data: Path,
    *,
    out: Path | None = None,
    keys: Collection[str] | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> BuiltProfile:
    """Run ``package`` on every series under ``data`` (those of ``keys`` when given) and
    write their profile to ``out`` (default: the package's ``profile.json``).

    Raises
    ------
    ValueError
        When no series there is one the model takes.
    inference.InferenceError
        When the package is broken or the backend cannot start.
    """
    records: list[dict[str, Any]] = []
    skipped = 0
    with load_model(package, backend) as model:
        series = list(dicom_series(data, keys).values())
        for files in tqdm(series, desc="profile", unit="series", disable=not progress):
            datasets = [pydicom.dcmread(path) for path in files]
            try:
                records.append(series_findings(model.predict(datasets), datasets[0]))
            except UnsupportedSeriesError:
                skipped += 1
        identity = model.identity
    if not records:
        which = "" if keys is None else f" among the {len(keys)} validation case(s)"
        raise ValueError(f"no series in {data}{which} that {package} takes")
    target = out or package / PROFILE_FILE
    document = build_profile(identity.name, identity.version, records)
    target.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return BuiltProfile(target, len(records), skipped)


def validation_keys(package: Path) -> frozenset[str]:
    """The study or series UIDs validated by the fold an exported ``package`` ships.

    Raises
    ------
    ValueError
        When the package carries no readable training provenance naming that fold.
    """
    path = package / TRAINING_PROVENANCE
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
        fold = provenance["fold"]
        folds = provenance["validation"]["folds"]
        return frozenset(next(f["validation"] for f in folds if f["fold"] == fold))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, StopIteration) as exc:
        raise ValueError(f"{path}: no validation cases of the shipped fold ({exc!r})") from None


def validation_profile(package: Path | str, data: Path | str, progress: bool) -> BuiltProfile:
    """The ``profile.json`` of an exported package, from its fold's validation studies
    under ``data`` (the folder it was fine-tuned on).

    Raises
    ------
    ValueError
        When the package names no validation cases, or none of them is under ``data``.
    inference.InferenceError
        When the package cannot start.
    """
    folder = Path(package)
    try:
        return build_package_profile(
            folder, Path(data), keys=validation_keys(folder), progress=progress
        )
    except ValueError as exc:
        raise ValueError(f"{folder} is written, its drift profile is not: {exc}") from None
