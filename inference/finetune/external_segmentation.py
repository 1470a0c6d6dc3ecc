"""External validation of a segmentation package: the node's masks against the truth.

Each truth (a DICOM SEG, or a NIfTI label map, `segmentation_truth`) is one case: the
source series it annotates is run through ``Model.predict`` exactly as the node's
worker runs it, and the truth is read onto the very source frames the prediction
names, so that truth and prediction share the source grid.
Per case and label: Dice, HD95 and the maximum Hausdorff distance in millimetres in
the source voxel spacing (`surface.hausdorff_mm`, MONAI's definition), and the volume
of truth and prediction. Per label: means with patient-bootstrap intervals, and the
same by sex, age band and manufacturer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import ModelPackageError, UnsupportedSeriesError
from inference.finetune.case_attributes import SUBGROUP_ATTRIBUTES
from inference.finetune.data import Case, SkippedInputs, make_case
from inference.finetune.dicom_index import DicomIndex
from inference.finetune.intervals import MIN_PER_CLASS, cluster_bootstrap
from inference.finetune.metrics import dice
from inference.finetune.report import EXTERNAL
from inference.finetune.segmentation_truth import Truth
from inference.finetune.surface import hausdorff_mm
from inference.model import Model
from inference.prediction import Segmentation
from inference.spec import Task

Json = dict[str, Any]
HD_UNIT = "mm"


@dataclass(frozen=True)
class CaseFigures:
    """One series scored against its SEG, label by label (lists in label order).

    A distance is ``None`` where it is undefined: exactly one of truth and prediction
    empty, or the source spacing unknown (then no millimetre figure can be given).
    """

    case: Case
    dice: tuple[float, ...]
    hd95: tuple[float | None, ...]
    hd_max: tuple[float | None, ...]
    truth_ml: tuple[float | None, ...]
    predicted_ml: tuple[float | None, ...]


def _spacing(prediction: Segmentation) -> tuple[float, float, float] | None:
    if prediction.pixel_spacing_mm is None or prediction.slice_spacing_mm is None:
        return None
    return (prediction.slice_spacing_mm, *prediction.pixel_spacing_mm)


def _distance(value: float) -> float | None:
    return None if math.isinf(value) else value


def score_case(case: Case, prediction: Segmentation, truth: npt.NDArray[np.bool_]) -> CaseFigures:
    """Dice, HD95, maximum HD and volumes of every label of one case.

    Parameters
    ----------
    case : Case
        Who the series belongs to (for subgroups and the bootstrap).
    prediction : inference.Segmentation
        The node's masks on the source frames.
    truth : numpy.ndarray
        (frames, rows, columns, labels) bool truth on the same frames.

    Returns
    -------
    CaseFigures
    """
    spacing = _spacing(prediction)
    voxel_ml = None if prediction.voxel_volume_mm3 is None else prediction.voxel_volume_mm3 / 1000
    dices: list[float] = []
    hd95: list[float | None] = []
    hd_max: list[float | None] = []
    truth_ml: list[float | None] = []
    predicted_ml: list[float | None] = []
    for k in range(len(prediction.labels)):
        mine, theirs = prediction.mask(k), truth[..., k]
        dices.append(dice(theirs, mine))
        if spacing is None:
            hd95.append(None)
            hd_max.append(None)
        else:
            hd95.append(_distance(hausdorff_mm(theirs, mine, spacing, 95.0)))
            hd_max.append(_distance(hausdorff_mm(theirs, mine, spacing, None)))
        truth_ml.append(None if voxel_ml is None else int(theirs.sum()) * voxel_ml)
        predicted_ml.append(None if voxel_ml is None else int(mine.sum()) * voxel_ml)
    return CaseFigures(
        case, tuple(dices), tuple(hd95), tuple(hd_max), tuple(truth_ml), tuple(predicted_ml)
    )


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def mean_with_interval(
    values: Sequence[float], patients: Sequence[str], resamples: int, seed: int
) -> Json:
    """The mean, and its patient-bootstrap 95% interval from `MIN_PER_CLASS` cases up.

    Returns
    -------
    dict
        ``mean``, ``ci95`` (``None`` below the minimum) and ``note`` saying why not.
    """
    if not values:
        return {"mean": None, "ci95": None, "note": "no case with a defined value"}
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(values) < MIN_PER_CLASS:
        note = f"too few to estimate: {len(values)} case(s), fewer than {MIN_PER_CLASS}"
        return {"mean": _round(mean), "ci95": None, "note": note}
    low, high = cluster_bootstrap(
        lambda index: float(data[index].mean()), patients, resamples=resamples, seed=seed
    )
    return {"mean": _round(mean), "ci95": [_round(low), _round(high)], "note": None}


def _defined(
    figures: Sequence[CaseFigures], pick: Callable[[CaseFigures], float | None]
) -> tuple[list[float], list[str]]:
    values, patients = [], []
    for item in figures:
        value = pick(item)
        if value is not None:
            values.append(value)
            patients.append(item.case.patient)
    return values, patients


def _label_block(figures: Sequence[CaseFigures], k: int, resamples: int, seed: int) -> Json:
    dices = [f.dice[k] for f in figures]
    patients = [f.case.patient for f in figures]
    hd95, hd95_patients = _defined(figures, lambda f: f.hd95[k])
    hd_max, _ = _defined(figures, lambda f: f.hd_max[k])
    dice_mean = mean_with_interval(dices, patients, resamples, seed)
    hd95_mean = mean_with_interval(hd95, hd95_patients, resamples, seed)
    return {
        "n": len(figures),
        "dice_mean": dice_mean["mean"],
        "dice_ci95": dice_mean["ci95"],
        "dice_ci_note": dice_mean["note"],
        "dice_median": _round(float(np.median(dices))),
        "dice": [round(v, 6) for v in dices],
        "hausdorff95_mean": hd95_mean["mean"],
        "hausdorff95_ci95": hd95_mean["ci95"],
        "hausdorff95_ci_note": hd95_mean["note"],
        "hausdorff_max_mean": _round(float(np.mean(hd_max))) if hd_max else None,
        "hausdorff_undefined": len(figures) - len(hd95),
        "hausdorff_unit": HD_UNIT,
    }


def _subgroups(figures: Sequence[CaseFigures], k: int) -> list[Json]:
    groups = []
    for attribute in SUBGROUP_ATTRIBUTES:
        values = [getattr(f.case, attribute) for f in figures]
        for group in sorted(set(values)):
            inside = [f for f, v in zip(figures, values, strict=True) if v == group]
            hd95 = [v for v in (f.hd95[k] for f in inside) if v is not None]
            groups.append(
                {
                    "attribute": attribute,
                    "group": group,
                    "n": len(inside),
                    "dice_mean": _round(float(np.mean([f.dice[k] for f in inside]))),
                    "hausdorff95_mean": _round(float(np.mean(hd95))) if hd95 else None,
                }
            )
    return groups


def _case_rows(figures: Sequence[CaseFigures], names: Sequence[str]) -> list[Json]:
    return [
        {
            "case": f.case.key,
            "sex": f.case.sex,
            "age_band": f.case.age_band,
            "manufacturer": f.case.manufacturer,
            "labels": {
                name: {
                    "dice": round(f.dice[k], 6),
                    "hausdorff95": _round(f.hd95[k]),
                    "hausdorff_max": _round(f.hd_max[k]),
                    "truth_ml": _round(f.truth_ml[k]),
                    "predicted_ml": _round(f.predicted_ml[k]),
                }
                for k, name in enumerate(names)
            },
        }
        for f in figures
    ]


def segmentation_results(
    figures: Sequence[CaseFigures], names: Sequence[str], resamples: int, seed: int
) -> Json:
    """The report's results for an external segmentation validation: one "fold"."""
    labels = []
    for k, name in enumerate(names):
        block = _label_block(figures, k, resamples, seed)
        pooled = {**block, "subgroups": _subgroups(figures, k)}
        labels.append(
            {
                "label": name,
                "pooled": pooled,
                "folds": [{"fold": EXTERNAL, "best_epoch": None, **block}],
            }
        )
    return {
        "task": Task.SEGMENTATION.value,
        "level": "series",
        "labels": labels,
        "cases": _case_rows(figures, names),
        "selection": {"rule": "the package as shipped", "fold": EXTERNAL, "scores": []},
    }


def score_segmentations(
    model: Model,
    index: DicomIndex,
    truths: Sequence[Truth],
    age_bands: Sequence[int],
    skipped: SkippedInputs,
    progress: Callable[[Sequence[Truth]], Iterable[Truth]],
) -> list[CaseFigures]:
    """Run the package on every series a truth (SEG or NIfTI) annotates, and score it.

    Raises
    ------
    ValueError
        When there is no truth, or two annotate one series.
    ModelPackageError
        When the package does not predict a segmentation.
    """
    if not truths:
        raise ValueError(
            "no DICOM SEG or NIfTI label map found: the labels of a segmentation package"
        )
    seen: dict[str, Path] = {}
    figures: list[CaseFigures] = []
    for truth in progress(truths):
        uid = truth.series_uid
        if uid in seen:
            raise ValueError(f"{truth.path} and {seen[uid]} both annotate series {uid}")
        seen[uid] = truth.path
        entry = index.series.get(uid)
        if entry is None:
            skipped.add("no_dicom", f"{truth.path}: source series {uid} not in the folder")
            continue
        datasets = index.read_series(uid)
        try:
            prediction = model.predict(datasets)
        except UnsupportedSeriesError as exc:
            skipped.add("other_modality", f"{uid}: {exc.reason}")
            continue
        if not isinstance(prediction, Segmentation):
            raise ModelPackageError(
                model.package.path, "model.task", f"predicted {type(prediction).__name__}"
            )
        for reason in prediction.skipped:
            skipped.add("not_prepared", f"{uid}: {reason}")
        case = make_case(uid, entry.header, age_bands, ())
        figures.append(score_case(case, prediction, truth.masks(prediction, datasets)))
    for uid in sorted(set(index.series) - set(seen)):
        skipped.add("no_label", f"series {uid}: no SEG or NIfTI map of the package's labels")
    return figures
