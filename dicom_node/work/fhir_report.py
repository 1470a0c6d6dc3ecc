"""A job's results as FHIR R4 resources: a DiagnosticReport and an Observation per finding.

Built from the notification document (`dicom_node.work.notification_document`), so that
a webhook and a FHIR server are told the same facts, and validated by `fhir.resources`
(its R4B models: DiagnosticReport and Observation are the same in R4 and R4B) before
anything leaves the node.

- The ImagingStudy is referenced by identifier, as the DICOM study is known to every
  FHIR server that indexes imaging: system ``urn:dicom:uid``, value ``urn:oid:<Study
  Instance UID>``; the accession number goes on the report as an ``ACSN`` identifier.
- Each Observation is one label of one series: its probability, volume, voxel or box
  count as components, POS/NEG as its interpretation, derived from the ImagingStudy.
- Every resource carries a ``urn:uuid`` identifier derived from the notification's
  idempotency key, and is created with ``ifNoneExist`` (or the ``If-None-Exist``
  header), so that a retried notification creates nothing twice on a server that
  honours conditional creates.
- The patient is named (``subject``, by identifier) only when the entry allows patient
  identifiers.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

UUID_SYSTEM = "urn:ietf:rfc:3986"
DICOM_UID_SYSTEM = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_SECTION = "http://terminology.hl7.org/CodeSystem/v2-0074"
_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
# (finding key, component name, UCUM unit) of the measures a finding may carry.
_MEASURES = (
    ("probability", "probability", "1"),
    ("volume_ml", "volume", "mL"),
    ("voxels", "voxel count", "1"),
    ("boxes", "detected boxes", "1"),
)


def resource_uuid(key: str, *parts: str) -> str:
    """A stable ``urn:uuid`` for one resource of the notification ``key``."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join([key, *parts]))}"


def _imaging_study(study_uid: str) -> dict[str, Any]:
    return {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
    }


def _subject(study: dict[str, Any]) -> dict[str, Any] | None:
    if not study.get("patient_id"):
        return None
    subject: dict[str, Any] = {"type": "Patient", "identifier": {"value": study["patient_id"]}}
    if study.get("patient_name"):
        subject["display"] = study["patient_name"]
    return subject


def _study_date(value: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD) as a FHIR date; None when absent or not a plain date."""
    if not value or len(value) != 8 or not value.isdigit():
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def _components(finding: dict[str, Any]) -> list[dict[str, Any]]:
    components = []
    for key, name, unit in _MEASURES:
        value = finding.get(key)
        if value is None:
            continue
        quantity = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        components.append({"code": {"text": name}, "valueQuantity": quantity})
    return components


def _observation(
    document: dict[str, Any], series: dict[str, Any], finding: dict[str, Any]
) -> Observation:
    job = document["job"]
    positive = finding.get("positive")
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [
            {
                "system": UUID_SYSTEM,
                "value": resource_uuid(
                    document["idempotency_key"], series["series_instance_uid"], finding["label"]
                ),
            }
        ],
        "status": "final",
        "category": [{"coding": [{"system": _CATEGORY, "code": "imaging"}]}],
        "code": {"text": finding["label"]},
        "subject": _subject(document["study"]),
        "issued": job["finished_at"],
        "device": {"display": f"{job['model']} {job['model_version']}"},
        "derivedFrom": [_imaging_study(document["study"]["study_instance_uid"])],
        "note": [{"text": f"series {series['series_instance_uid']}"}],
        "component": _components(finding) or None,
    }
    if positive is not None:
        code = "POS" if positive else "NEG"
        data["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": code}]}]
    return Observation.model_validate({k: v for k, v in data.items() if v is not None})


def observations(document: dict[str, Any]) -> list[Observation]:
    """One Observation per label of each series the model ran on.

    Raises
    ------
    pydantic.ValidationError
        When the document does not make valid resources (a bug, not the receiver's).
    """
    return [
        _observation(document, series, finding)
        for series in document["series"]
        for finding in series["findings"]
    ]


def _conclusion(document: dict[str, Any]) -> str:
    positive = sorted(
        {f["label"] for s in document["series"] for f in s["findings"] if f.get("positive")}
    )
    job = document["job"]
    found = ", ".join(positive) if positive else "no finding above its threshold"
    return f"{job['model']} {job['model_version']}: {found}"


def diagnostic_report(document: dict[str, Any], results: list[str]) -> DiagnosticReport:
    """The report of the job, referencing its Observations (``results``: their
    references, ``urn:uuid:...`` in a Bundle, ``Observation/<id>`` on the server).

    Raises
    ------
    pydantic.ValidationError
        When the document does not make a valid resource.
    """
    study, job = document["study"], document["job"]
    identifiers: list[dict[str, Any]] = [
        {"system": UUID_SYSTEM, "value": resource_uuid(document["idempotency_key"], "report")}
    ]
    if study.get("accession_number"):
        identifiers.append(
            {
                "type": {"coding": [{"system": _IDENTIFIER_TYPE, "code": "ACSN"}]},
                "value": study["accession_number"],
            }
        )
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": identifiers,
        "status": "final",
        "category": [{"coding": [{"system": _SECTION, "code": "RAD"}]}],
        "code": {"text": f"{job['model']} {job['model_version']}"},
        "subject": _subject(study),
        "effectiveDateTime": _study_date(study.get("study_date")),
        "issued": job["finished_at"],
        "imagingStudy": [_imaging_study(study["study_instance_uid"])],
        "result": [{"reference": reference} for reference in results] or None,
        "conclusion": _conclusion(document),
    }
    return DiagnosticReport.model_validate({k: v for k, v in data.items() if v is not None})


def resource_id(resource: Observation | DiagnosticReport) -> str:
    """The ``urn:uuid`` identifier this module gave ``resource`` (its first)."""
    identifiers = resource.identifier or []
    if not identifiers or identifiers[0].system != UUID_SYSTEM:
        raise ValueError(f"{resource.get_resource_type()} has no {UUID_SYSTEM} identifier")
    return str(identifiers[0].value)


def if_none_exist(resource: Observation | DiagnosticReport) -> str:
    """The conditional-create query that finds ``resource`` again by its uuid identifier."""
    return f"identifier={UUID_SYSTEM}|{resource_id(resource)}"


def transaction_bundle(document: dict[str, Any]) -> Bundle:
    """One transaction Bundle: every Observation, then the report referencing them.

    Raises
    ------
    pydantic.ValidationError
        When the document does not make valid resources.
    """
    found = observations(document)
    full_urls = [resource_id(observation) for observation in found]
    report = diagnostic_report(document, full_urls)
    resources: list[Observation | DiagnosticReport] = [*found, report]
    entries = [
        {
            "fullUrl": resource_id(resource),
            "resource": resource,
            "request": {
                "method": "POST",
                "url": resource.get_resource_type(),
                "ifNoneExist": if_none_exist(resource),
            },
        }
        for resource in resources
    ]
    return Bundle.model_validate(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
