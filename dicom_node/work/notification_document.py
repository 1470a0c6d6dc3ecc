"""The JSON document a notification carries: what a job found and where its results went.

Read from the database when the notification is sent (the study's row, the job's
findings, its deliveries), so that it tells what the archive really holds. It is the
same bytes on every try of one notification (no send time in it), so that a signature
and a receiver's de-duplication see one document. Patient identifiers (PatientID,
PatientName) are in it only when the entry says ``include_patient_ids = true``; the
accession number always is, as the reporting system's key to the order.

Example (a segmentation delivered to one DICOM archive)::

    {
      "event": "results-available",
      "idempotency_key": "0f6c...",
      "node": "AINODE",
      "study": {"study_instance_uid": "1.2.3", "accession_number": "A123",
                "study_date": "20260101", "study_description": "CT ABDOMEN"},
      "job": {"id": 7, "routes": ["ct"], "model": "liver-seg", "model_version": "1.2.0",
              "finished_at": "2026-01-01T10:00:00+00:00"},
      "series": [{"series_instance_uid": "1.2.3.4", "task": "segmentation",
                  "findings": [{"label": "liver", "threshold": 0.5, "voxels": 81234,
                                "volume_ml": 1510.2, "positive": true}],
                  "skipped": []}],
      "results": [{"sop_instance_uid": "1.2.9.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
                   "delivered_to": [{"peer": "pacs", "ae_title": "ORTHANC",
                                     "storage_commitment": false}]}]
    }
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.config import DicomwebPeerConfig, NodeConfig, NotificationBase
from dicom_node.db.schema import Delivery, Job, Notification, Study

EVENT = "results-available"


def _study(study: Study, with_patient: bool) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
    }
    if with_patient:
        facts["patient_id"] = study.patient_id
        facts["patient_name"] = study.patient_name
    return facts


def _destination(config: NodeConfig, delivery: Delivery) -> dict[str, Any]:
    where: dict[str, Any] = {"peer": delivery.peer_name}
    try:
        peer = config.peer(delivery.peer_name)
    except KeyError:
        return where  # a peer removed from the config since
    if isinstance(peer, DicomwebPeerConfig):
        where["url"] = peer.url
    else:
        where["ae_title"] = peer.ae_title
        where["storage_commitment"] = delivery.commitment_transaction_uid is not None
    return where


def _results(config: NodeConfig, deliveries: list[Delivery]) -> list[dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for delivery in deliveries:
        entry = objects.setdefault(
            delivery.sop_instance_uid,
            {
                "sop_instance_uid": delivery.sop_instance_uid,
                "sop_class_uid": delivery.sop_class_uid,
                "delivered_to": [],
            },
        )
        entry["delivered_to"].append(_destination(config, delivery))
    return list(objects.values())


def _series(findings: dict[str, Any]) -> list[dict[str, Any]]:
    """Each series' findings, without the drift inputs (they stay in the node)."""
    return [
        {
            "series_instance_uid": series.get("series_uid"),
            "task": series.get("task"),
            "findings": series.get("labels", []),
            "skipped": series.get("skipped", []),
        }
        for series in findings.get("series", [])
    ]


def notification_document(
    session: Session, notification: Notification, entry: NotificationBase, config: NodeConfig
) -> dict[str, Any]:
    """The document for ``notification`` (see the module docstring).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        When the database fails.
    """
    job = session.get_one(Job, notification.job_id)
    study = session.get_one(Study, notification.study_id)
    deliveries = list(
        session.scalars(select(Delivery).where(Delivery.job_id == job.id).order_by(Delivery.id))
    )
    series = _series(job.findings or {})
    versions = [s.get("model_version") for s in (job.findings or {}).get("series", [])]
    return {
        "event": EVENT,
        "idempotency_key": notification.idempotency_key,
        "node": config.node.ae_title,
        "study": _study(study, entry.include_patient_ids),
        "job": {
            "id": job.id,
            "routes": job.route_name.split("+"),
            "model": job.model_name,
            "model_version": next((v for v in versions if v), None),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        },
        "series": series,
        "results": _results(config, deliveries),
    }
