"""Labelled DICOM to training tensors, through the node's own preprocessing.

Classification labels come from a CSV with one row per study or per series (the key
column, ``StudyInstanceUID`` or ``SeriesInstanceUID``, says which) and one 0/1
column per label of the config; every image of a labelled study or series is a
training image with that label, and validation scores a study or series as the
node does: the highest probability over its images. Segmentation masks come from
SEG objects in the same folder, matched to labels by segment label.

Each series goes through `plan_series` and `iter_prepared`, the functions the node
runs before every prediction, with the package spec of the model being trained:
what the network sees in training is exactly what it will see in service.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from tqdm import tqdm

from inference.errors import UnsupportedSeriesError
from inference.finetune.case_attributes import UNKNOWN_MANUFACTURER, manufacturer, study_date
from inference.finetune.dicom_index import DicomIndex, SeriesEntry, index_folder
from inference.finetune.subgroups import age_band, patient_age_years, patient_sex
from inference.preprocessing.loader import FrameFailure, PreparedFrame, iter_prepared
from inference.preprocessing.plan import plan_series
from inference.preprocessing.resize import to_model
from inference.spec import ModelSpec, Task

logger = logging.getLogger(__name__)

T = TypeVar("T")
KEY_COLUMNS = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series"}
_TRUE = {"1", "1.0", "true", "yes", "y"}
_FALSE = {"0", "0.0", "false", "no", "n"}


class LabelFileError(ValueError):
    """The labels CSV is wrong: names the file, the line and the offending value."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


@dataclass(frozen=True)
class Case:
    """One labelled unit (a study or a series) and the patient it belongs to.

    ``manufacturer`` and ``study_date`` (ISO, empty when unknown) feed the subgroups
    and the model card's training-data provenance.
    """

    key: str
    patient: str
    sex: str
    age_band: str
    target: tuple[float, ...] = ()
    manufacturer: str = UNKNOWN_MANUFACTURER
    study_date: str = ""


SKIP_KINDS = {
    "no_label": "in the DICOM folder with no label",
    "no_dicom": "labelled, with no DICOM in the folder",
    "other_modality": "of a modality the model does not take",
    "unreadable": "unreadable or not DICOM",
    "not_prepared": "left out by the preprocessing",
}


@dataclass
class SkippedInputs:
    """Everything the data left out, by kind (the keys of `SKIP_KINDS`), each item
    naming what was left out (a UID or a file) and why, for the summary and report.
    """

    items: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in SKIP_KINDS})

    def add(self, kind: str, item: str) -> None:
        """Record one input left out.

        Raises
        ------
        KeyError
            When ``kind`` is not one of `SKIP_KINDS`.
        """
        if kind not in SKIP_KINDS:
            raise KeyError(f"unknown kind of skipped input {kind!r}; one of {list(SKIP_KINDS)}")
        self.items[kind].append(item)

    def counts(self) -> dict[str, int]:
        """How many of each kind."""
        return {kind: len(items) for kind, items in self.items.items()}

    def lines(self) -> list[str]:
        """One line per kind that occurred: count, meaning and a first example."""
        return [
            f"{len(items)} {SKIP_KINDS[kind]} ({kind}), e.g. {items[0]}"
            for kind, items in self.items.items()
            if items
        ]


@dataclass
class TrainingData:
    """Preprocessed images, their targets, and the case each image belongs to.

    ``targets`` is (N, labels) float 0/1 for classification and (N, H, W) int64 label
    maps (0 background) for segmentation; ``spacing`` is (N, 2) millimetres per model
    pixel (NaN where the source does not say).
    """

    task: Task
    labels: tuple[str, ...]
    level: str
    cases: list[Case]
    images: npt.NDArray[np.float32]
    targets: npt.NDArray[np.generic]
    case_of: npt.NDArray[np.int64]
    spacing: npt.NDArray[np.float64]
    skipped: SkippedInputs = field(default_factory=SkippedInputs)

    def summary(self) -> str:
        """Label counts and class balance, per label, in cases and images."""
        lines = [
            f"{len(self.cases)} {self.level}(s) from {len({c.patient for c in self.cases})} "
            f"patient(s), {len(self.images)} image(s) of shape {tuple(self.images.shape[1:])}"
        ]
        for index, name in enumerate(self.labels):
            if self.task is Task.CLASSIFICATION:
                cases = sum(c.target[index] > 0.5 for c in self.cases)
                images = int((np.asarray(self.targets, dtype=np.float32)[:, index] > 0.5).sum())
                share = cases / max(1, len(self.cases))
                lines.append(
                    f"  {name}: {cases} positive / {len(self.cases) - cases} negative "
                    f"{self.level}(s) ({share:.1%} positive), {images} positive image(s)"
                )
            else:
                present = int((self.targets == index + 1).any(axis=(1, 2)).sum())
                pixels = float((self.targets == index + 1).mean())
                lines.append(
                    f"  {name}: present on {present} of {len(self.images)} image(s), "
                    f"{pixels:.2%} of pixels"
                )
        lines += [f"  skipped: {line}" for line in self.skipped.lines()]
        return "\n".join(lines)


def _flag(value: str, path: Path, line: int, column: str) -> float:
    text = value.strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise LabelFileError(path, line, f"column {column!r}: {value!r} is not 0/1 (true/false)")


def read_labels(
    path: Path | str, labels: Sequence[str]
) -> tuple[str, dict[str, tuple[float, ...]]]:
    """Read a labels CSV: a key column and one 0/1 column per label.

    Parameters
    ----------
    path : pathlib.Path or str
        The CSV file (header row first).
    labels : sequence of str
        The label names of the config, in output order.

    Returns
    -------
    level : str
        ``study`` or ``series``, from the key column.
    targets : dict
        Key UID to one 0/1 value per label.

    Raises
    ------
    LabelFileError
        When the key column or a label column is missing, a value is not 0/1, or
        a key is repeated with different labels.
    """
    source = Path(path)
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        keys = [c for c in header if c in KEY_COLUMNS]
        if len(keys) != 1:
            raise LabelFileError(
                source, 1, f"needs exactly one of {sorted(KEY_COLUMNS)} columns, header {header}"
            )
        missing = [name for name in labels if name not in header]
        if missing:
            raise LabelFileError(source, 1, f"label column(s) {missing} missing, header {header}")
        targets: dict[str, tuple[float, ...]] = {}
        for line, row in enumerate(reader, start=2):
            key = (row.get(keys[0]) or "").strip()
            if not key:
                raise LabelFileError(source, line, f"empty {keys[0]}")
            target = tuple(_flag(row.get(n) or "", source, line, n) for n in labels)
            if targets.get(key, target) != target:
                raise LabelFileError(source, line, f"{key} repeated with other labels")
            targets[key] = target
    if not targets:
        raise LabelFileError(source, 2, "no label rows")
    return KEY_COLUMNS[keys[0]], targets


def make_case(key: str, header: Dataset, bands: Sequence[int], target: tuple[float, ...]) -> Case:
    """The case of ``key`` from its first series' header: patient, sex, age band, vendor."""
    patient = str(header.get("PatientID", "") or "")
    if not patient:
        patient = f"study:{header.get('StudyInstanceUID', key)}"
        logger.warning("no PatientID for %s: the study counts as its own patient", key)
    age = age_band(patient_age_years(header), bands)
    return Case(
        key, patient, patient_sex(header), age, target, manufacturer(header), study_date(header)
    )


@dataclass
class _Collected:
    images: list[npt.NDArray[np.float32]] = field(default_factory=list)
    targets: list[npt.NDArray[np.generic]] = field(default_factory=list)
    case_of: list[int] = field(default_factory=list)
    spacing: list[tuple[float, float]] = field(default_factory=list)
    skipped: SkippedInputs = field(default_factory=SkippedInputs)


def _prepare(
    datasets: Sequence[Dataset], spec: ModelSpec, pool: ThreadPoolExecutor, out: _Collected
) -> list[tuple[PreparedFrame, tuple[float, float]]]:
    """The node's preprocessing of one series: prepared frames and mm per model pixel."""
    try:
        plan = plan_series(datasets, spec)
    except UnsupportedSeriesError as exc:
        out.skipped.add("not_prepared", str(exc))
        return []
    for reason in plan.skipped:
        out.skipped.add("not_prepared", reason)
    spacing_of = {}
    for stack in plan.stacks:
        for frame in stack.frames:
            spacing_of[frame.ref] = stack.pixel_spacing_mm
    prepared = []
    for item in iter_prepared(datasets, plan.stacks, spec, pool):
        if isinstance(item, FrameFailure):
            out.skipped.add("not_prepared", item.reason)
            continue
        source = spacing_of.get(item.frame.ref)
        if source is None:
            mm = (float("nan"), float("nan"))
        else:
            fit = item.fit
            mm = (source[0] / fit.scale(0), source[1] / fit.scale(1))
        prepared.append((item, mm))
    return prepared


def _takes_modality(entry: SeriesEntry, spec: ModelSpec, out: _Collected) -> bool:
    """Whether the model takes the series' modality; records it as skipped if not."""
    wanted = {m.upper() for m in spec.input.modalities}
    if entry.modality.upper() in wanted:
        return True
    out.skipped.add(
        "other_modality",
        f"series {entry.series_uid}: Modality {entry.modality or '(none)'!r} "
        f"not in {list(spec.input.modalities)}",
    )
    return False


def _progress(items: Sequence[T], description: str, enabled: bool) -> Iterable[T]:
    return tqdm(items, desc=description, unit="series", disable=not enabled, leave=False)


def load_classification(
    index: DicomIndex,
    labels_csv: Path | str,
    spec: ModelSpec,
    age_bands: Sequence[int],
    pool: ThreadPoolExecutor,
    progress: bool = False,
) -> TrainingData:
    """Preprocess every labelled study or series of an indexed folder for a classifier.

    Series and labels that cannot be used are counted in ``skipped``: keys with no
    DICOM, DICOM with no label, series of another modality, unreadable files and
    parts the preprocessing leaves out.

    Raises
    ------
    LabelFileError
        When the CSV is wrong.
    ValueError
        When no labelled key is in the folder, or no labelled image could be prepared.
    """
    names = tuple(label.name for label in spec.output.labels)
    level, targets = read_labels(labels_csv, names)
    groups: dict[str, list[SeriesEntry]] = (
        index.by_study() if level == "study" else {k: [v] for k, v in index.series.items()}
    )
    absent = [key for key in targets if key not in groups]
    if len(absent) == len(targets):
        raise ValueError(
            f"none of the {len(targets)} {level} UIDs in {labels_csv} is in the folder"
        )
    out = _Collected()
    for key in absent:
        out.skipped.add("no_dicom", f"{level} {key}")
    for key in groups:
        if key not in targets:
            out.skipped.add("no_label", f"{level} {key}")
    for reason in index.unreadable:
        out.skipped.add("unreadable", reason)
    cases: list[Case] = []
    labelled = [key for key in targets if key in groups]
    for key in _progress(labelled, "reading and preprocessing", progress):
        target = targets[key]
        entries = [e for e in groups[key] if _takes_modality(e, spec, out)]
        frames = []
        for entry in entries:
            frames += _prepare(index.read_series(entry.series_uid), spec, pool, out)
        if not frames:
            out.skipped.add("not_prepared", f"{level} {key}: no image the model takes")
            continue
        for item, mm in frames:
            out.images.append(item.input)
            out.targets.append(np.asarray(target, dtype=np.float32))
            out.case_of.append(len(cases))
            out.spacing.append(mm)
        cases.append(make_case(key, groups[key][0].header, age_bands, target))
    return _finish(Task.CLASSIFICATION, names, level, cases, out)


def segment_numbers(seg: hd.seg.Segmentation, names: Sequence[str], path: Path) -> list[int]:
    """The SEG's segment number of each label (matched by Segment Label), 0 where absent.

    Raises
    ------
    ValueError
        When the SEG has a segment for none of the labels.
    """
    numbers = []
    described = {
        int(item.SegmentNumber): str(item.SegmentLabel).strip().lower()
        for item in seg.SegmentSequence
    }
    for name in names:
        found = [n for n, label in described.items() if label == name.strip().lower()]
        numbers.append(found[0] if found else 0)
    if not any(numbers):
        raise ValueError(
            f"{path}: no segment labelled {list(names)}; its segments are "
            f"{sorted(described.values())}"
        )
    return numbers


def _mask_to_model(
    label_map: npt.NDArray[np.generic], fit_item: PreparedFrame, labels: int
) -> npt.NDArray[np.int64]:
    """A source-grid label map to the model grid, by the same fit as the image."""
    onehot = np.stack([(label_map == n + 1) for n in range(labels)], axis=-1).astype(np.float32)
    resized = to_model(onehot, fit_item.fit)
    out = np.zeros(resized.shape[:2], dtype=np.int64)
    for n in range(labels):
        out[resized[..., n] >= 0.5] = n + 1
    return out


def load_segmentation(
    index: DicomIndex,
    spec: ModelSpec,
    age_bands: Sequence[int],
    pool: ThreadPoolExecutor,
    progress: bool = False,
) -> TrainingData:
    """Preprocess every series that a SEG object in the folder annotates.

    Each SEG's segments are matched to the config's labels by Segment Label (case
    insensitive); frames of the source series that the SEG does not cover are
    empty (negative) examples.

    Raises
    ------
    ValueError
        When the folder holds no SEG, a SEG names no config label, or nothing
        could be prepared.
    """
    names = tuple(label.name for label in spec.output.labels)
    if not index.segmentations:
        raise ValueError("no SEG objects in the DICOM folder: segmentation needs them as masks")
    out = _Collected()
    for reason in index.unreadable:
        out.skipped.add("unreadable", reason)
    cases: list[Case] = []
    annotated: set[str] = set()
    for path in _progress(index.segmentations, "reading and preprocessing", progress):
        seg = hd.seg.segread(path)
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        if series_uid not in index.series:
            out.skipped.add("no_dicom", f"{path}: source series {series_uid} not in the folder")
            continue
        annotated.add(series_uid)
        if not _takes_modality(index.series[series_uid], spec, out):
            continue
        numbers = segment_numbers(seg, names, path)
        frames = _prepare(index.read_series(series_uid), spec, pool, out)
        if not frames:
            continue
        uids = [item.frame.ref.sop_instance_uid for item, _ in frames]
        present = [n for n in numbers if n]
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=present,
            combine_segments=True,
            relabel=True,
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )
        # relabel numbers the present segments 1..k in order; map back to label slots.
        slots = np.zeros(len(present) + 1, dtype=np.int64)
        for k, number in enumerate(present, start=1):
            slots[k] = numbers.index(number) + 1
        case = make_case(series_uid, index.series[series_uid].header, age_bands, ())
        for (item, mm), frame_map in zip(frames, pixels, strict=True):
            out.images.append(item.input)
            out.targets.append(_mask_to_model(slots[frame_map.astype(np.int64)], item, len(names)))
            out.case_of.append(len(cases))
            out.spacing.append(mm)
        cases.append(case)
    for series_uid in index.series:
        if series_uid not in annotated:
            out.skipped.add("no_label", f"series {series_uid}: no SEG in the folder annotates it")
    return _finish(Task.SEGMENTATION, names, "series", cases, out)


def _finish(
    task: Task, names: tuple[str, ...], level: str, cases: list[Case], out: _Collected
) -> TrainingData:
    if not out.images:
        reasons = "; ".join(out.skipped.lines()[:3])
        raise ValueError(f"no labelled image could be prepared for the model ({reasons})")
    return TrainingData(
        task=task,
        labels=names,
        level=level,
        cases=cases,
        images=np.stack(out.images).astype(np.float32),
        targets=np.stack(out.targets),
        case_of=np.asarray(out.case_of, dtype=np.int64),
        spacing=np.asarray(out.spacing, dtype=np.float64),
        skipped=out.skipped,
    )


def load_training_data(
    dicom_dir: Path | str,
    spec: ModelSpec,
    age_bands: Sequence[int],
    labels_csv: Path | str | None = None,
    threads: int = 4,
    progress: bool = False,
) -> TrainingData:
    """Index a DICOM folder and preprocess its labelled images for the task.

    Parameters
    ----------
    dicom_dir : pathlib.Path or str
        Folder of DICOM files (any depth); for segmentation it also holds the SEGs.
    spec : ModelSpec
        The spec of the package being trained: preprocessing follows it.
    age_bands : sequence of int
        Band edges for the subgroup report.
    labels_csv : pathlib.Path or str, optional
        Classification labels; required for classification.
    threads : int
        Decoding threads.
    progress : bool
        Progress bars while headers are indexed and series read and preprocessed.

    Returns
    -------
    TrainingData

    Raises
    ------
    FileNotFoundError
        When the folder or CSV does not exist.
    LabelFileError
        When the CSV is malformed.
    ValueError
        When nothing labelled could be prepared, or a classifier has no CSV.
    """
    classification = spec.model.task is Task.CLASSIFICATION
    if classification and labels_csv is None:
        raise ValueError("classification needs a labels CSV (--labels)")
    if labels_csv is not None and classification and not Path(labels_csv).is_file():
        raise FileNotFoundError(f"labels CSV not found: {labels_csv}")
    index = index_folder(dicom_dir, progress)
    with ThreadPoolExecutor(
        max_workers=max(1, threads), thread_name_prefix="finetune-prep"
    ) as pool:
        if labels_csv is None or not classification:
            return load_segmentation(index, spec, age_bands, pool, progress)
        return load_classification(index, labels_csv, spec, age_bands, pool, progress)
