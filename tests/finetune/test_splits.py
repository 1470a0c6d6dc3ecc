"""Patient-level splits: no patient on both sides, every case validated once."""

from __future__ import annotations

import numpy as np
import pytest

from inference.finetune.splits import patient_splits


def _patients() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    patients = [f"P{int(i)}" for i in rng.integers(0, 30, 90)]
    strata = ["1" if int(p[1:]) % 5 == 0 else "0" for p in patients]
    return patients, strata


def test_k_folds_keep_patients_together_and_cover_every_case() -> None:
    patients, strata = _patients()
    splits = patient_splits(patients, strata, 5, seed=1)
    assert [s.fold for s in splits] == [1, 2, 3, 4, 5]
    validated = np.concatenate([s.validation for s in splits])
    assert sorted(validated.tolist()) == list(range(len(patients)))
    for split in splits:
        train = {patients[i] for i in split.train}
        held = {patients[i] for i in split.validation}
        assert not train & held
        # Stratified: the rare stratum (every fifth patient) is in every fold.
        assert any(strata[i] == "1" for i in split.validation)


def test_same_seed_same_split_other_seed_other_split() -> None:
    patients, strata = _patients()
    first = patient_splits(patients, strata, 3, seed=7)
    again = patient_splits(patients, strata, 3, seed=7)
    other = patient_splits(patients, strata, 3, seed=8)
    assert all(
        np.array_equal(a.validation, b.validation) for a, b in zip(first, again, strict=True)
    )
    assert not all(
        np.array_equal(a.validation, b.validation) for a, b in zip(first, other, strict=True)
    )


def test_hold_out_split() -> None:
    patients, strata = _patients()
    (split,) = patient_splits(patients, strata, 1, seed=0, val_fraction=0.25)
    held = {patients[i] for i in split.validation}
    assert 0.15 < len(held) / len(set(patients)) < 0.35
    assert not held & {patients[i] for i in split.train}


def test_too_few_patients() -> None:
    with pytest.raises(ValueError, match="2 patient"):
        patient_splits(["a", "b", "a"], ["0", "1", "0"], 3, seed=0)
