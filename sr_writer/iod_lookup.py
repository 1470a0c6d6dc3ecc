"""highdicom's "is this attribute in this IOD" lookup, answered once per question.

highdicom (0.28) answers ``is_attribute_in_iod(attribute, sop_class_uid)`` by
walking the standard's module tables every time, and a SEG asks it once per
source image (``is_multiframe_image`` while reading plane positions): on a
300-slice CT that walk was about a third of building the SEG. The answer depends
only on the two arguments and the tables shipped with highdicom, so it is
memoized here for the calls without ``exclude_path_elements``.

`remember_iod_lookups` puts the memoized function in highdicom's module in place
of the original; everything highdicom calls through that module's namespace
(``is_multiframe_image``, ``does_iod_have_pixel_data``) then uses it. It is
idempotent, and where highdicom no longer has the function it does nothing.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Sequence

from highdicom import _standard_utils

Lookup = Callable[..., bool]

_MARK = "_sr_writer_memoized"


def memoized(lookup: Lookup) -> Lookup:
    """``lookup(attribute, sop_class_uid, exclude_path_elements=None)``, memoized.

    Calls with ``exclude_path_elements`` (a list, rarely used) go to ``lookup``.
    """
    cached = functools.lru_cache(maxsize=1024)(
        lambda attribute, sop_class_uid: bool(lookup(attribute, sop_class_uid))
    )

    @functools.wraps(lookup)
    def answer(
        attribute: str,
        sop_class_uid: str,
        exclude_path_elements: Sequence[str] | None = None,
    ) -> bool:
        if exclude_path_elements is not None:
            return bool(lookup(attribute, sop_class_uid, exclude_path_elements))
        return bool(cached(attribute, str(sop_class_uid)))

    setattr(answer, _MARK, True)
    return answer


def remember_iod_lookups() -> None:
    """Have highdicom answer each IOD attribute question once per process, from
    tables loaded with the collector paused (`load_standard_tables`)."""
    original = getattr(_standard_utils, "is_attribute_in_iod", None)
    if original is None or getattr(original, _MARK, False):
        return
    load_standard_tables()
    _standard_utils.is_attribute_in_iod = memoized(original)


TABLE_LOADERS = ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map")
"""highdicom's cached loaders of the standard's tables (JSON shipped with it)."""


def load_standard_tables() -> None:
    """Load highdicom's standard tables now, with cyclic collection paused, then
    freeze what the process holds (`gc.freeze`).

    Parsing the module table makes a few hundred thousand objects that live as long
    as the process. With the collector on, the collections their allocations trigger
    walk the growing heap again and again (about 290 of them; a fresh process: 0.22 s
    with, 0.13 s without), and once loaded, every full collection walks them again:
    the first SEG and SR of a 140-slice CT spent 0.23 s in collections after a plain
    load, 0.004 s with the tables frozen (`benchmarks.pipeline`'s series). Freezing
    takes everything alive at that moment out of the collector's sight for good:
    in the node that is its start-up state (`warm_up` builds the first SEG); objects
    among it that later become garbage are still freed by reference counting, only a
    reference cycle among them would stay (pydicom's datasets hold none). Pausing
    every build instead moves its collections into the next study's reading
    (measured slower overall).
    """
    collecting = gc.isenabled()  # a caller that turned the collector off keeps it off
    gc.disable()
    try:
        for name in TABLE_LOADERS:
            loader = getattr(_standard_utils, name, None)
            if loader is not None:
                loader()
        gc.freeze()
    finally:
        if collecting:
            gc.enable()
