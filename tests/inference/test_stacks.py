"""Series into stacks: sorted along the normal, split by acquisition and orientation."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydicom.uid import generate_uid

from inference.preprocessing.stacks import list_frames, split_stacks
from tests.inference.dicom_factory import AXIAL, CORONAL, SAGITTAL, ct_series, ct_slice

ZEROS = np.zeros((8, 8))


def _volume(n: int) -> np.ndarray:
    """Slice k is filled with the value 10 * k, so order is visible in the pixels."""
    return np.stack([np.full((8, 8), 10.0 * k) for k in range(n)])


@pytest.mark.parametrize(
    "orientation", [AXIAL, SAGITTAL, CORONAL], ids=["axial", "sagittal", "coronal"]
)
def test_sorted_along_the_normal_not_by_instance_number(orientation: tuple[float, ...]) -> None:
    series = ct_series(_volume(6), spacing=2.5, orientation=orientation)
    random.Random(4).shuffle(series)
    frames, skipped = list_frames(series)
    stacks, _ = split_stacks(frames)
    assert skipped == [] and len(stacks) == 1
    stack = stacks[0]
    positions = [np.asarray(f.geometry.position) for f in stack.frames]
    normal = stack.frames[0].geometry.normal
    assert normal is not None
    distances = [float(np.dot(normal, p)) for p in positions]
    assert distances == sorted(distances)
    assert stack.slice_spacing_mm == pytest.approx(2.5)
    assert stack.regular
    # The order is the volume's order, which runs against InstanceNumber.
    numbers = [int(series[f.dataset_index].InstanceNumber) for f in stack.frames]
    assert numbers == sorted(numbers, reverse=True)


def test_repeated_acquisitions_become_separate_stacks() -> None:
    uid = generate_uid()
    first = ct_series(_volume(4), series_uid=uid, acquisition=1)
    second = ct_series(_volume(4), series_uid=uid, acquisition=2)
    mixed = first + second
    random.Random(1).shuffle(mixed)
    stacks, _ = split_stacks(list_frames(mixed)[0])
    assert len(stacks) == 2
    for stack in stacks:
        acquisitions = {mixed[f.dataset_index].AcquisitionNumber for f in stack.frames}
        assert len(acquisitions) == 1 and len(stack.frames) == 4 and stack.regular


def test_repeats_within_one_acquisition_are_split_too() -> None:
    uid = generate_uid()
    series = ct_series(_volume(3), series_uid=uid) + ct_series(_volume(3), series_uid=uid)
    stacks, _ = split_stacks(list_frames(series)[0])
    assert [len(s.frames) for s in stacks] == [3, 3]
    assert all(s.regular for s in stacks)


def test_per_slice_acquisition_numbers_stay_one_stack() -> None:
    uid = generate_uid()
    series = [
        ct_slice(ZEROS, position=(0, 0, 2.0 * k), series_uid=uid, acquisition=k + 1)
        for k in range(5)
    ]
    stacks, _ = split_stacks(list_frames(series)[0])
    assert len(stacks) == 1 and len(stacks[0].frames) == 5


def test_localizer_and_second_orientation_are_kept_apart() -> None:
    uid = generate_uid()
    axial = ct_series(_volume(5), series_uid=uid)
    coronal = ct_series(_volume(3), series_uid=uid, orientation=CORONAL)
    scout = ct_slice(
        ZEROS, position=(0, 0, 0), series_uid=uid, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    stacks, skipped = split_stacks(list_frames([*coronal, scout, *axial])[0])
    assert [len(s.frames) for s in stacks] == [5, 3]
    assert "localizer" in skipped[0]
    assert stacks[0].frames[0].geometry.orientation == pytest.approx(AXIAL)


def test_gap_makes_a_stack_irregular() -> None:
    uid = generate_uid()
    series = [
        ct_slice(ZEROS, position=(0, 0, z), series_uid=uid) for z in (0.0, 2.0, 4.0, 10.0, 12.0)
    ]
    (stack,), _ = split_stacks(list_frames(series)[0])
    assert stack.slice_spacing_mm == pytest.approx(2.0)
    assert not stack.regular


def test_single_slice_uses_slice_thickness() -> None:
    series = [ct_slice(ZEROS, position=(0, 0, 0), series_uid=generate_uid())]
    (stack,), _ = split_stacks(list_frames(series)[0])
    assert stack.slice_spacing_mm == pytest.approx(2.0)


def test_frames_without_geometry_keep_their_order() -> None:
    uid = generate_uid()
    series = [ct_slice(ZEROS, position=(0, 0, k), series_uid=uid) for k in range(3)]
    for ds in series:
        del ds.ImagePositionPatient
    (stack,), _ = split_stacks(list_frames(series)[0])
    assert [f.dataset_index for f in stack.frames] == [0, 1, 2]
    assert stack.slice_spacing_mm is None and not stack.regular
