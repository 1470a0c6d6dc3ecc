"""Unit tests of the parts: outlines, UIDs, labelling."""

from __future__ import annotations

import numpy as np
import pytest

from inference import ModelIdentity
from sr_writer.content import series_description
from sr_writer.contour import largest_outline
from sr_writer.enum import ObjectKind
from sr_writer.uids import derive_uid, device_uid

ROOT = "1.2.826.0.1.3680043.8.498."


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:-1, 0], points[:-1, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2)


def test_outline_encloses_exactly_the_region_pixels() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[3:9, 4:12] = True
    mask[9:12, 4:6] = True  # an L shape

    outline = largest_outline(mask)

    assert outline is not None
    assert outline.enclosed_pixels == mask.sum()
    assert _shoelace(outline.points) == mask.sum()
    np.testing.assert_array_equal(outline.points[0], outline.points[-1])
    assert len(outline.points) == 7  # six corners, closed


def test_outline_picks_the_largest_region_and_keeps_its_hole_inside() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[2:5, 2:5] = True
    mask[10:20, 10:20] = True
    mask[14:16, 14:16] = False  # hole

    outline = largest_outline(mask)

    assert outline is not None
    assert outline.enclosed_pixels == 100
    assert outline.points.min(axis=0).tolist() == [10, 10]
    assert outline.points.max(axis=0).tolist() == [20, 20]


def test_diagonal_neighbours_are_separate_regions() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = mask[2, 3] = True

    outline = largest_outline(mask)

    assert outline is not None
    assert outline.enclosed_pixels == 2
    assert outline.points.tolist() == [[2, 2], [4, 2], [4, 3], [2, 3], [2, 2]]


def test_region_touching_the_border_is_traced() -> None:
    mask = np.ones((4, 6), dtype=bool)

    outline = largest_outline(mask)

    assert outline is not None
    assert outline.points.tolist() == [[0, 0], [6, 0], [6, 4], [0, 4], [0, 0]]


def test_empty_mask_has_no_outline() -> None:
    assert largest_outline(np.zeros((8, 8), dtype=bool)) is None


def test_outline_wants_a_2d_mask() -> None:
    with pytest.raises(ValueError, match=r"mask must be 2-D, got shape \(2, 8, 8\)"):
        largest_outline(np.zeros((2, 8, 8), dtype=bool))


def test_uids_are_stable_and_differ_by_every_input() -> None:
    model = ModelIdentity("m", "1")
    base = derive_uid(ROOT, "1.2.3", "1.2.3.1", model, ObjectKind.SR, "instance")

    assert base == derive_uid(ROOT, "1.2.3", "1.2.3.1", model, ObjectKind.SR, "instance")
    assert base.startswith(ROOT) and len(base) <= 64 and base.is_valid
    variants = {
        derive_uid(ROOT, "1.2.4", "1.2.3.1", model, ObjectKind.SR, "instance"),
        derive_uid(ROOT, "1.2.3", "1.2.3.2", model, ObjectKind.SR, "instance"),
        derive_uid(ROOT, "1.2.3", "1.2.3.1", ModelIdentity("m", "2"), ObjectKind.SR, "instance"),
        derive_uid(ROOT, "1.2.3", "1.2.3.1", ModelIdentity("n", "1"), ObjectKind.SR, "instance"),
        derive_uid(ROOT, "1.2.3", "1.2.3.1", model, ObjectKind.SEG, "instance"),
        derive_uid(ROOT, "1.2.3", "1.2.3.1", model, ObjectKind.SR, "series"),
    }
    assert base not in variants and len(variants) == 6


def test_uid_parts_do_not_run_together() -> None:
    a = derive_uid(ROOT, "1.2.3", "1.2.3.1", ModelIdentity("ab", "c"), ObjectKind.SR)
    b = derive_uid(ROOT, "1.2.3", "1.2.3.1", ModelIdentity("a", "bc"), ObjectKind.SR)
    c = derive_uid(ROOT, "1.2.3", "1.2.3.1a", ModelIdentity("bc", "1"), ObjectKind.SR)
    d = derive_uid(ROOT, "1.2.3", "1.2.3.1", ModelIdentity("abc", "1"), ObjectKind.SR)

    assert a != b and c != d


def test_uid_needs_a_study() -> None:
    with pytest.raises(ValueError, match="study_instance_uid must not be empty"):
        derive_uid(ROOT, "", "1.2.3.1", ModelIdentity("m", "1"), ObjectKind.SR)


def test_uid_needs_a_series() -> None:
    with pytest.raises(ValueError, match="series_instance_uid must not be empty"):
        derive_uid(ROOT, "1.2.3", "", ModelIdentity("m", "1"), ObjectKind.SR)


def test_series_description_keeps_kind_and_warning_within_64_characters() -> None:
    model = ModelIdentity("a-very-long-model-name-" * 3, "10.20.30")

    text = series_description(model, "overlay")

    assert len(text) == 64
    assert text.startswith("AI overlay - a-very-long")
    assert text.endswith("... - not for clinical use")


def test_series_description_for_a_clinical_model_has_no_warning() -> None:
    model = ModelIdentity("ct-liver", "2.0", not_for_clinical_use=False)

    assert series_description(model, "report") == "AI report - ct-liver 2.0"


def test_device_uid_names_the_model_on_the_node_not_the_study() -> None:
    model = ModelIdentity("m", "1")

    assert device_uid(ROOT, "AINODE", model) == device_uid(ROOT, "AINODE", model)
    assert device_uid(ROOT, "AINODE", model) != device_uid(ROOT, "OTHER", model)
    assert device_uid(ROOT, "AINODE", model) != device_uid(ROOT, "AINODE", ModelIdentity("m", "2"))
