"""Patient-level splits: k folds, or one hold-out, never splitting a patient.

Images of one patient (and several studies of one patient) are strongly correlated;
a patient on both sides of a split makes validation look better than deployment
will be. Folds are also stratified by the patient's label pattern, so that a rare
finding lands in every fold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Split:
    """Case indices for training and validation of one fold (1-based ``fold``)."""

    fold: int
    train: npt.NDArray[np.int64]
    validation: npt.NDArray[np.int64]


def patient_splits(
    patients: Sequence[str],
    strata: Sequence[str],
    folds: int,
    seed: int,
    val_fraction: float = 0.2,
) -> list[Split]:
    """Split cases into folds by patient, stratified by each patient's strata.

    Parameters
    ----------
    patients : sequence of str
        Patient of each case.
    strata : sequence of str
        Stratum of each case (its label pattern); a patient's stratum is the
        rarest among its cases.
    folds : int
        ``k >= 2`` for k-fold cross-validation, 1 for a single hold-out split.
    seed : int
        Shuffling seed.
    val_fraction : float
        Validation share of the patients with ``folds = 1``.

    Returns
    -------
    list of Split
        Disjoint validation sets covering every case once (k-fold), or one split.

    Raises
    ------
    ValueError
        When there are fewer patients than folds (or than 2 with a hold-out).
    """
    if len(patients) != len(strata):
        raise ValueError(f"{len(patients)} patients but {len(strata)} strata")
    cases_of: dict[str, list[int]] = defaultdict(list)
    for index, patient in enumerate(patients):
        cases_of[patient].append(index)
    frequency: dict[str, int] = defaultdict(int)
    for stratum in strata:
        frequency[stratum] += 1
    names = sorted(cases_of)
    needed = max(2, folds)
    if len(names) < needed:
        raise ValueError(f"{len(names)} patient(s): too few for {folds} fold(s)")
    patient_stratum = {
        p: min((strata[i] for i in cases_of[p]), key=lambda s: (frequency[s], s)) for p in names
    }
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for patient in names:
        by_stratum[patient_stratum[patient]].append(patient)
    order: list[str] = []
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        order += [members[i] for i in rng.permutation(len(members))]
    parts = max(folds, 1)
    if folds == 1:
        # One hold-out: every k-th patient of the stratified order, k = 1 / fraction.
        step = max(2, round(1 / val_fraction))
        assignment = {p: int(i % step == step - 1) for i, p in enumerate(order)}
    else:
        assignment = {p: i % parts for i, p in enumerate(order)}
    splits = []
    for fold in range(1 if folds == 1 else parts):
        held = fold if folds > 1 else 1
        validation = sorted(i for p in names if assignment[p] == held for i in cases_of[p])
        train = sorted(i for p in names if assignment[p] != held for i in cases_of[p])
        splits.append(
            Split(
                fold + 1, np.asarray(train, dtype=np.int64), np.asarray(validation, dtype=np.int64)
            )
        )
    return splits
