"""Which series of an archive's study a backfill fetches: the routes' conditions decided on
the archive's C-FIND answers, before a byte of pixel data moves (pure: no network, no
database).

Routing proper (`dicom_node.work.routing`) matches the headers the listener stored; here
the same matcher (`dicom_node.work.route_match`) runs on what the archive answered at
study and series level. A condition on an attribute the archive did not answer (an
archive that does not index it, or ``SOPClassUID``, which is not a series attribute) is
left undecided: the series is fetched, and routing decides on the stored headers. So a
series is skipped only when the archive's own answer rules it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicom_node.config import RouteConfig
from dicom_node.intake.headers import STUDY_KEYWORDS
from dicom_node.net.query_retrieve import FoundSeries, FoundStudy
from dicom_node.work.route_match import Facts, route_matches, split_values

# Not attributes a C-FIND can match or return per series.
_NOT_QUERYABLE = frozenset({"SOPClassUID", "CallingAETitle", "StudyInstanceUID"})
# Study-level keys of the Study Root information model besides the listener's own.
_STUDY_LEVEL = frozenset(
    {*STUDY_KEYWORDS, "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"}
)
# Counts the archive answers: not facts a route matches on.
_COUNTS = frozenset(
    {
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfSeriesRelatedInstances",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "SpecificCharacterSet",
    }
)


@dataclass(frozen=True)
class QueryKeywords:
    """The attributes to ask the archive for, so that the routes can be decided."""

    study: tuple[str, ...]
    series: tuple[str, ...]


@dataclass(frozen=True)
class StudyPlan:
    """The series of one study that some route wants, or why none is wanted.

    ``whole_study`` is True when every series the archive holds is wanted (one
    study-level retrieval instead of one per series).
    """

    study: FoundStudy
    series: list[FoundSeries]
    whole_study: bool
    reason: str = ""

    @property
    def expected_instances(self) -> int | None:
        """The archive's instance count of the wanted series; None when it gave none."""
        counts = [s.instances for s in self.series]
        if self.series and all(n is not None for n in counts):
            return sum(n for n in counts if n is not None)
        if self.whole_study:
            return self.study.count("NumberOfStudyRelatedInstances")
        return None


def query_keywords(routes: Sequence[RouteConfig]) -> QueryKeywords:
    """Study- and series-level keywords the routes' conditions name (those a C-FIND can
    answer), in the order the routes name them."""
    study: list[str] = []
    series: list[str] = []
    for route in routes:
        for keyword in route.match:
            if keyword in _NOT_QUERYABLE:
                continue
            target = study if keyword in _STUDY_LEVEL else series
            if keyword not in target:
                target.append(keyword)
    return QueryKeywords(tuple(study), tuple(series))


def series_facts(study: FoundStudy, series: FoundSeries, sender_aet: str | None) -> Facts:
    """What the archive said of a series and its study, as route facts; the calling AE
    title is the archive's, as it will be on the retrieved instances (none over
    DICOMweb)."""
    facts: dict[str, list[str]] = {
        keyword: split_values(text)
        for keyword, text in (*study.values.items(), *series.values.items())
        if keyword not in _COUNTS
    }
    facts["StudyInstanceUID"] = [study.study_instance_uid]
    facts["SeriesInstanceUID"] = [series.series_instance_uid]
    facts["CallingAETitle"] = [sender_aet] if sender_aet else []
    return {keyword: values for keyword, values in facts.items() if values}


def _decidable(route: RouteConfig, facts: Facts) -> RouteConfig:
    """``route`` with only the conditions the archive's answer can decide."""
    return route.model_copy(update={"match": {k: v for k, v in route.match.items() if k in facts}})


def plan_study(
    routes: Sequence[RouteConfig],
    study: FoundStudy,
    series: Sequence[FoundSeries],
    sender_aet: str | None,
) -> StudyPlan:
    """The series of ``study`` that some route of ``routes`` may match.

    Returns a plan without series, and the reason, when the archive's answers rule every
    series out (or the study has none).
    """
    if not series:
        return StudyPlan(study, [], False, "the archive lists no series for the study")
    wanted: list[FoundSeries] = []
    misses: list[str] = []
    for item in series:
        facts = series_facts(study, item, sender_aet)
        results = [route_matches(_decidable(route, facts), facts) for route in routes]
        if any(result.matched for result in results):
            wanted.append(item)
        else:
            reasons = "; ".join(
                f"{route.name}: {result.reason}"
                for route, result in zip(routes, results, strict=True)
            )
            misses.append(f"series {item.series_instance_uid}: {reasons or 'no routes'}")
    if not wanted:
        return StudyPlan(study, [], False, "no route matches: " + " | ".join(misses))
    return StudyPlan(study, wanted, len(wanted) == len(series))
