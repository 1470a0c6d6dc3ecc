"""highdicom's IOD attribute lookup, memoized: the same answers, asked once."""

from __future__ import annotations

import pytest
from highdicom import _standard_utils
from pydicom import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    SegmentationStorage,
)

from sr_writer.iod_lookup import memoized, remember_iod_lookups

CLASSES = [CTImageStorage, EnhancedCTImageStorage, SegmentationStorage, ComprehensiveSRStorage]
ATTRIBUTES = ["NumberOfFrames", "PixelData", "ContentDate", "FrameOfReferenceUID"]


class _Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.original = getattr(_standard_utils.is_attribute_in_iod, "__wrapped__", None) or (
            _standard_utils.is_attribute_in_iod
        )

    def __call__(self, *args: object) -> bool:
        self.calls += 1
        return bool(self.original(*args))


@pytest.mark.parametrize("sop_class", CLASSES)
def test_memoized_answers_equal_highdicoms(sop_class: str) -> None:
    counting = _Counting()
    lookup = memoized(counting)
    for attribute in ATTRIBUTES:
        assert lookup(attribute, sop_class) == counting.original(attribute, sop_class)
        excluded = ["IconImageSequence"]
        assert lookup(attribute, sop_class, excluded) == counting.original(
            attribute, sop_class, excluded
        )


def test_each_question_is_answered_once() -> None:
    counting = _Counting()
    lookup = memoized(counting)
    for _ in range(50):
        assert lookup("NumberOfFrames", EnhancedCTImageStorage)
        assert not lookup("NumberOfFrames", CTImageStorage)
    assert counting.calls == 2


def test_unknown_sop_class_still_raises() -> None:
    lookup = memoized(_Counting())
    with pytest.raises(KeyError, match="No IOD found"):
        lookup("NumberOfFrames", "1.2.3.4")


def test_remembering_twice_wraps_once() -> None:
    remember_iod_lookups()
    installed = _standard_utils.is_attribute_in_iod
    remember_iod_lookups()
    assert _standard_utils.is_attribute_in_iod is installed
    enhanced, single = Dataset(), Dataset()
    enhanced.SOPClassUID, single.SOPClassUID = EnhancedCTImageStorage, CTImageStorage
    assert _standard_utils.is_multiframe_image(enhanced)
    assert not _standard_utils.is_multiframe_image(single)
