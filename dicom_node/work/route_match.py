"""Whether a series satisfies a route's ``match`` conditions: pure functions, no database.

A series is described by its *facts*: keyword -> values, gathered from the study and
series rows, the stored series headers, the SOP classes of its instances and the calling
AE title of the association that sent it. Every condition of a route must hold; a
condition holds when any one of the fact's values satisfies it, so that multi-valued
attributes (``ImageType``) and series with several SOP classes match naturally:

- an exact value: equal as text (surrounding spaces ignored, case kept); a number in
  the config compares numerically (``SeriesNumber = 2`` matches ``"2"`` and ``"2.0"``);
- a list: any of its values, as above;
- ``{regex = "..."}``: :func:`re.search` anywhere in the value (anchor with ``^...$``);
- ``{min = .., max = ..}``: the value read as a number lies in the closed range.

A keyword the series does not have never matches (not even a range or a regex that
would accept an empty value): a route on ``BodyPartExamined`` skips series without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dicom_node.config import MatchValue, RangeMatch, RegexMatch, RouteConfig, Scalar

Facts = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class MatchResult:
    """The outcome for one route: matched, or the first condition that did not hold."""

    matched: bool
    reason: str = ""


def split_values(text: str | None) -> list[str]:
    """A stored header value as its DICOM values (backslash-separated, padding dropped)."""
    if text is None:
        return []
    return [part.strip() for part in str(text).split("\\") if part.strip()]


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _equals(expected: Scalar, actual: str) -> bool:
    if isinstance(expected, bool) or not isinstance(expected, int | float):
        return str(expected).strip() == actual
    number = _as_number(actual)
    return number is not None and number == float(expected)


def value_matches(condition: MatchValue, actual: str) -> bool:
    """Whether one value satisfies one condition (see the module docstring)."""
    if isinstance(condition, RegexMatch):
        return re.search(condition.regex, actual) is not None
    if isinstance(condition, RangeMatch):
        number = _as_number(actual)
        if number is None:
            return False
        low_ok = condition.min is None or number >= condition.min
        return low_ok and (condition.max is None or number <= condition.max)
    if isinstance(condition, list):
        return any(_equals(option, actual) for option in condition)
    return _equals(condition, actual)


def _describe(condition: MatchValue) -> str:
    if isinstance(condition, RegexMatch):
        return f"regex {condition.regex!r}"
    if isinstance(condition, RangeMatch):
        return f"range [{condition.min}, {condition.max}]"
    return repr(condition)


def route_matches(route: RouteConfig, facts: Facts) -> MatchResult:
    """Whether a series with these facts satisfies every condition of ``route``."""
    for keyword, condition in route.match.items():
        values = facts.get(keyword, ())
        if not values:
            return MatchResult(False, f"{keyword} missing (route wants {_describe(condition)})")
        if not any(value_matches(condition, value) for value in values):
            shown = "\\".join(values)
            return MatchResult(False, f"{keyword}={shown!r} is not {_describe(condition)}")
    return MatchResult(True)
