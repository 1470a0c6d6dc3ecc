"""External validation: a package run exactly as the node runs it, on a labelled set.

``dicom-node evaluate`` starts the package with `inference.load_model` (the node's
preprocessing and backend, nothing from training) and calls ``Model.predict`` once per
series as the node's worker does. A classifier's labelled study or series is scored
by its highest series probability, and the scores go to the same evaluation and
report as fine-tuning, with one "fold" named ``external`` whose thresholds are the
package's own. A segmentation package's masks are compared with DICOM SEG truth on
the source slices (`external_segmentation`): Dice and HD95 in millimetres per case.
A detection package is refused with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import ModelPackageError, UnsupportedSeriesError
from inference.finetune.data import Case, SkippedInputs, TrainingData, make_case, read_labels
from inference.finetune.dicom_index import DicomIndex, SeriesEntry, index_folder
from inference.finetune.evaluation import evaluate_classification
from inference.finetune.external_segmentation import score_segmentations, segmentation_results
from inference.finetune.model_card import check_card_applies, record_external_validation
from inference.finetune.report import EXTERNAL, write_report
from inference.finetune.segmentation_truth import nifti_files, seg_files, truths
from inference.finetune.subgroups import DEFAULT_AGE_BANDS
from inference.finetune.training import FoldOutcome
from inference.model import Model, load_model
from inference.prediction import Classification
from inference.spec import Task

logger = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class ExternalResult:
    """Where the report went, and how many cases it rests on."""

    report: Path
    cases: int
    skipped: dict[str, int]


def _progress(items: Sequence[Any], description: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="case")


def _case_score(
    model: Model,
    index: DicomIndex,
    entries: Sequence[SeriesEntry],
    labels: Sequence[str],
    skipped: SkippedInputs,
) -> tuple[float, ...] | None:
    """The highest probability per label over the case's series; None if none ran."""
    best: list[float] | None = None
    for entry in entries:
        try:
            prediction = model.predict(index.read_series(entry.series_uid))
        except UnsupportedSeriesError as exc:
            skipped.add("other_modality", f"{entry.series_uid}: {exc.reason}")
            continue
        if not isinstance(prediction, Classification):
            raise ModelPackageError(
                model.package.path, "model.task", f"predicted {type(prediction).__name__}"
            )
        by_name = {score.label.name: score.probability for score in prediction.scores}
        scores = [float(by_name[name]) for name in labels]
        best = scores if best is None else [max(a, b) for a, b in zip(best, scores, strict=True)]
    return None if best is None else tuple(best)


def _classification(
    model: Model,
    index: DicomIndex,
    labels_csv: Path | str,
    skipped: SkippedInputs,
    progress: bool,
    seed: int,
    resamples: int,
) -> tuple[dict[str, Any], list[Case]]:
    """Score every labelled study or series by its highest series probability."""
    spec = model.spec
    names = tuple(label.name for label in spec.labels)
    level, targets = read_labels(labels_csv, names)
    groups = index.by_study() if level == "study" else {k: [v] for k, v in index.series.items()}
    cases, scores = [], []
    for key in _progress(sorted(targets), "evaluate", progress):
        entries = groups.get(key)
        if not entries:
            skipped.add("no_dicom", key)
            continue
        score = _case_score(model, index, entries, names, skipped)
        if score is None:
            continue
        cases.append(make_case(key, entries[0].header, DEFAULT_AGE_BANDS, targets[key]))
        scores.append(score)
    for key in sorted(set(groups) - set(targets)):
        skipped.add("no_label", key)
    if not cases:
        return {}, cases
    thresholds = [label.threshold for label in spec.labels]
    results = _external_results(
        cases, np.asarray(scores), names, level, thresholds, seed, resamples
    )
    return results, cases


def _segmentation(
    model: Model,
    index: DicomIndex,
    labels: Path | str | None,
    skipped: SkippedInputs,
    progress: bool,
    seed: int,
    resamples: int,
) -> tuple[dict[str, Any], list[Case]]:
    """Score every series a SEG (in the data or labels folder) or a NIfTI label map (in
    the labels folder) annotates."""
    segs = {path.resolve(): path for path in index.segmentations}
    niftis: list[Path] = []
    if labels is not None:
        segs |= {path.resolve(): path for path in seg_files(labels)}
        niftis = nifti_files(labels)
    names = [label.name for label in model.spec.labels]
    figures = score_segmentations(
        model,
        index,
        truths(sorted(segs.values()), niftis, names, skipped),
        DEFAULT_AGE_BANDS,
        skipped,
        lambda items: _progress(items, "evaluate", progress),
    )
    if not figures:
        return {}, []
    return segmentation_results(figures, names, resamples, seed), [f.case for f in figures]


def evaluate_package(
    package: Path | str,
    data: Path | str,
    labels: Path | str | None,
    out: Path | str,
    *,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
    card: bool = False,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> ExternalResult:
    """Run ``package`` on every labelled case of ``data`` and write the validation report.

    Parameters
    ----------
    package : pathlib.Path or str
        The model package folder, as the node loads it.
    data : pathlib.Path or str
        A folder of DICOM files (any layout).
    labels : pathlib.Path or str or None
        Classification: a CSV, ``StudyInstanceUID`` or ``SeriesInstanceUID`` and one
        0/1 column per label. Segmentation: a folder of DICOM SEG objects referencing
        the source series (segments matched to labels by Segment Label) and/or NIfTI
        label maps named ``SERIES_UID.nii.gz`` (`segmentation_truth`), or ``None``
        when SEGs are in ``data``.
    out : pathlib.Path or str
        The report folder (``report.md``, ``report.html``, ``results.json``, plots).
    backend, device : str
        As `inference.load_model` takes them.
    progress : bool
        A progress bar per case.
    card : bool
        Also record the figures in the package's model card (`model_card`).
    seed, resamples : int
        The patient bootstrap of the intervals.

    Returns
    -------
    ExternalResult

    Raises
    ------
    ModelPackageError
        When the package is broken or is a detection package, or (with ``card``) its
        model card describes another version.
    LabelFileError
        When the labels CSV is malformed or lacks a label of the package.
    FileNotFoundError
        When a folder or the CSV does not exist.
    ValueError
        When no labelled case could be run, a classifier has no CSV, or a
        segmentation package finds no SEG.
    """
    model = load_model(package, backend, device)
    try:
        spec = model.spec
        task = spec.model.task
        if task is Task.DETECTION:
            raise ModelPackageError(
                Path(package) / "model.toml",
                "model.task",
                "evaluate takes classification and segmentation packages, not 'detection'",
            )
        if card:
            check_card_applies(Path(package), spec)
        index = index_folder(data, progress=progress)
        skipped = SkippedInputs()
        for item in index.unreadable:
            skipped.add("unreadable", item)
        if task is Task.SEGMENTATION:
            results, cases = _segmentation(model, index, labels, skipped, progress, seed, resamples)
        elif labels is None:
            raise ValueError("a classification package needs a labels CSV (--labels)")
        else:
            results, cases = _classification(
                model, index, labels, skipped, progress, seed, resamples
            )
    finally:
        model.close()
    if not cases:
        raise ValueError(f"{data}: no labelled case could be run ({skipped.lines()})")
    run = {
        "model": spec.model.name,
        "version": spec.model.version,
        "package": str(package),
        "dataset": str(data),
        "backend": model.backend_name,
        "seed": seed,
        "cases": len(cases),
        "data": f"{len(cases)} {results['level']}(s) from "
        f"{len({c.patient for c in cases})} patient(s)",
        "skipped": skipped.counts(),
    }
    report = write_report(results, run, Path(out))
    if card:
        record_external_validation(Path(package), spec, results, run, report)
    return ExternalResult(report, len(cases), skipped.counts())


def _external_results(
    cases: list[Any],
    scores: np.ndarray[Any, np.dtype[np.float64]],
    names: tuple[str, ...],
    level: str,
    thresholds: Sequence[float],
    seed: int,
    resamples: int,
) -> dict[str, Any]:
    """The fine-tuning evaluation over one "fold": every case, at the package thresholds."""
    data = TrainingData(
        task=Task.CLASSIFICATION,
        labels=names,
        level=level,
        cases=cases,
        images=np.zeros((0, 1, 1, 1), np.float32),
        targets=np.zeros((0, len(names)), np.float32),
        case_of=np.zeros(0, np.int64),
        spacing=np.zeros((0, 2)),
    )
    everything = np.arange(len(cases), dtype=np.int64)
    outcome = FoldOutcome(0, 0, float("nan"), 0, everything, np.zeros(0, np.int64), scores)
    rules = [format(float(t), ".10f") for t in thresholds]
    results = evaluate_classification(data, [outcome], rules, resamples, seed)
    for label in results["labels"]:
        for fold in label["folds"]:
            fold["fold"] = EXTERNAL
    results["selection"] = {"rule": "the package as shipped", "fold": EXTERNAL, "scores": []}
    return results
