"""A whole fine-tuning run: data, patient-level folds, training, validation report.

The run folder holds everything needed to resume, to audit and to export::

    RUN/config.json             the checked training config
    RUN/fold-K/checkpoint.pt    resumable state of fold K (every epoch)
    RUN/fold-K/best.pt          the fold's best weights (by validation metric)
    RUN/fold-K/done.json        written when the fold is finished
    RUN/report/                 report.md, report.html, PNG plots, figures.json
    RUN/model_card.json, .md    training-data provenance and internal validation
    RUN/summary.json            the shipped fold and its thresholds, every fold's
                                thresholds and validation keys, skipped inputs

Which network is shipped, and at which threshold: every fold's threshold is chosen
on that fold network's own validation scores, and export ships one fold's network
with its own thresholds, so that the package reproduces, on the data the threshold
was chosen on, the operating point the report states for it. The fold is chosen by
`inference.finetune.selection`, which does not reward a small fold's luck.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from inference.finetune.config import FinetuneConfig
from inference.finetune.data import TrainingData, load_training_data
from inference.finetune.evaluation import evaluate_classification, evaluate_segmentation
from inference.finetune.model_card import write_training_card
from inference.finetune.report import fmt, interval_text, small_number_warnings, write_report
from inference.finetune.splits import patient_splits
from inference.finetune.training import FoldOutcome, train_fold
from inference.spec import Task

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
SUMMARY_JSON = "summary.json"
REPORT_DIR = "report"


@dataclass(frozen=True)
class RunSummary:
    """What a run produced: where, which fold is shipped, its thresholds and results."""

    run_dir: Path
    report: Path
    selected_fold: int
    thresholds: tuple[float, ...]
    results: dict[str, Any]

    def headline(self) -> str:
        """Per label: pooled AUC with its interval (or why none), and the shipped
        fold's operating point; or the pooled Dice."""
        lines = []
        for label in self.results["labels"]:
            pooled = label["pooled"]
            if self.results["task"] == Task.CLASSIFICATION.value:
                shipped = next(f for f in label["folds"] if f["fold"] == self.selected_fold)
                lines.append(
                    f"{label['label']}: pooled out-of-fold AUC {fmt(pooled['auc'])} "
                    f"({interval_text(pooled['auc_ci95'], pooled['auc_ci_note'])}); shipped "
                    f"fold {self.selected_fold} at threshold {fmt(shipped['threshold'], 4)}: "
                    f"sensitivity {fmt(shipped['sensitivity'])}, specificity "
                    f"{fmt(shipped['specificity'])} on its {shipped['n']} validation case(s)"
                )
            else:
                lines.append(
                    f"{label['label']}: pooled Dice {fmt(pooled['dice_mean'])}, "
                    f"HD95 {fmt(pooled['hausdorff95_mean'])} {pooled['hausdorff_unit']}"
                )
        return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU if there is one, else the CPU.

    Raises
    ------
    ValueError
        When a CUDA device is asked for and none is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def make_deterministic(seed: int, device: torch.device) -> None:
    """Seed every generator and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    # Some CUDA backward kernels (bilinear upsampling) have no deterministic version:
    # on a GPU torch warns instead of failing; on the CPU every kernel is.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


def _strata(data: TrainingData) -> list[str]:
    if data.task is Task.SEGMENTATION:
        return ["" for _ in data.cases]
    return ["".join(str(int(v > 0.5)) for v in case.target) for case in data.cases]


def weights_provenance(path: Path | None) -> dict[str, str] | None:
    """What the tool knows of pretrained weights: the file's name and SHA-256.

    Where the weights came from (which data, which licence) is only what the user
    says; the report states it as declared, not as checked.
    """
    if path is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "file": path.name,
        "sha256": digest.hexdigest(),
        "provenance": "as declared by the user",
    }


def _initialisation(weights: dict[str, str] | None) -> str:
    if weights is None:
        return "random (no pretrained weights given)"
    return (
        f"pretrained weights from the file {weights['file']} (sha256 {weights['sha256']}; "
        "provenance as declared by the user)"
    )


def _fold_thresholds(results: dict[str, Any], fold: int) -> list[float]:
    return [
        next(f["threshold"] for f in label["folds"] if f["fold"] == fold)
        for label in results["labels"]
    ]


def finetune(
    config: FinetuneConfig,
    dicom_dir: Path | str,
    run_dir: Path | str,
    labels_csv: Path | str | None = None,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    threads: int = 0,
) -> RunSummary:
    """Fine-tune with k-fold cross-validation and write the validation report.

    Parameters
    ----------
    config : FinetuneConfig
        From `read_config`.
    dicom_dir : pathlib.Path or str
        Labelled DICOM (and SEG objects for segmentation).
    run_dir : pathlib.Path or str
        Output folder; an interrupted run with the same config resumes there.
    labels_csv : pathlib.Path or str, optional
        Classification labels per study or series.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    progress : bool
        Progress bars for folds and epochs.
    echo : callable
        Where the data summary and results are printed.
    threads : int
        CPU threads for torch; 0 keeps torch's default. On a busy machine one
        thread can be many times faster than several that wait on each other.

    Returns
    -------
    RunSummary

    Raises
    ------
    FileNotFoundError
        When the DICOM folder, labels or weights file is missing.
    ValueError
        When the data hold nothing usable, too few patients for the folds, or the
        run folder belongs to another configuration.
    """
    target = Path(run_dir)
    target.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    t = config.training
    make_deterministic(t.seed, torch_device)
    if threads > 0:
        torch.set_num_threads(threads)
    if config.weights_path is not None and not config.weights_path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {config.weights_path}")
    echo(f"Indexing and preprocessing {dicom_dir} ...")
    data = load_training_data(dicom_dir, config.spec, t.age_bands, labels_csv, progress=progress)
    echo(f"Training data ({config.spec.model.name}):\n{data.summary()}")
    splits = patient_splits(
        [c.patient for c in data.cases], _strata(data), t.folds, t.seed, t.val_fraction
    )
    (target / CONFIG_JSON).write_text(
        json.dumps(
            {"config": config.model_dump(mode="json"), "fingerprint": config.fingerprint()},
            indent=1,
        ),
        encoding="utf-8",
    )
    outcomes: list[FoldOutcome] = []
    for split in tqdm(splits, desc="folds", unit="fold", disable=not progress):
        outcomes.append(
            train_fold(config, data, split, target / f"fold-{split.fold}", torch_device, progress)
        )
    if data.task is Task.CLASSIFICATION:
        results = evaluate_classification(data, outcomes, t.threshold, t.bootstrap, t.seed)
    else:
        results = evaluate_segmentation(data, outcomes)
    selected = int(results["selection"]["fold"])
    fold_thresholds = {
        o.fold: (
            _fold_thresholds(results, o.fold)
            if data.task is Task.CLASSIFICATION
            else [label.threshold for label in config.spec.output.labels]
        )
        for o in outcomes
    }
    weights = weights_provenance(config.weights_path)
    run_info = {
        "model": config.spec.model.name,
        "version": config.spec.model.version,
        "backbone": t.backbone.value,
        "initialisation": _initialisation(weights),
        "weights": weights,
        "folds": len(splits),
        "seed": t.seed,
        "device": str(torch_device),
        "amp": t.amp and torch_device.type == "cuda",
        "data": data.summary(),
        "skipped": data.skipped.counts(),
    }
    report = write_report(results, run_info, target / REPORT_DIR)
    write_training_card(target, config, data, results, run_info, report, dicom_dir)
    summary = RunSummary(target, report, selected, tuple(fold_thresholds[selected]), results)
    (target / SUMMARY_JSON).write_text(
        json.dumps(
            {
                "selected_fold": selected,
                "selection_rule": results["selection"]["rule"],
                "thresholds": fold_thresholds[selected],
                "run": run_info,
                "folds": [
                    {
                        "fold": o.fold,
                        "best_epoch": o.best_epoch,
                        "best_metric": o.best_metric,
                        "epochs_run": o.epochs_run,
                        "thresholds": fold_thresholds[o.fold],
                        "validation": [data.cases[c].key for c in o.cases],
                    }
                    for o in outcomes
                ],
                "skipped": data.skipped.items,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    echo(summary.headline())
    warnings = small_number_warnings(results)
    if warnings:
        echo(
            f"{len(warnings)} figure(s) rest on small numbers, e.g. {warnings[0]} "
            "(all in the report's 'Small numbers' section)"
        )
    for line in data.skipped.lines():
        echo(f"Skipped: {line}")
    echo(f"Report: {report}")
    return summary


def load_run_config(run_dir: Path | str) -> FinetuneConfig:
    """The config a run was trained with, from its ``config.json``.

    Raises
    ------
    FileNotFoundError
        When the folder holds no run.
    """
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        raise FileNotFoundError(f"not a fine-tuning run folder (no {CONFIG_JSON}): {run_dir}")
    return FinetuneConfig.model_validate(json.loads(path.read_text(encoding="utf-8"))["config"])


def read_summary(run_dir: Path | str) -> dict[str, Any]:
    """A finished run's ``summary.json``.

    Raises
    ------
    FileNotFoundError
        When the run has not finished.
    """
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"run not finished (no {SUMMARY_JSON}): {run_dir}")
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary


__all__ = [
    "RunSummary",
    "finetune",
    "load_run_config",
    "read_summary",
    "resolve_device",
    "weights_provenance",
]
