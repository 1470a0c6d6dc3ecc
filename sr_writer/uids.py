"""Deterministic UIDs: the same job always names its results the same way.

A retried job must replace its earlier results in the archive, not add duplicates,
so every UID is a hash of what identifies the result: the source study and series,
the model's name and version, the object kind, and the role of the UID within the
object. The series is part of it because one job may run a model on several series of
a study (a route matching two CT series): each series' results must have UIDs of their
own, or the archive would keep only one series' results.
"""

from __future__ import annotations

from pydicom.uid import UID, generate_uid

from inference import ModelIdentity
from sr_writer.enum import ObjectKind

_SEPARATOR = "\x1f"
"""ASCII unit separator: a control character that UIDs, model names and labels lack."""


def derive_uid(
    root: str,
    study_instance_uid: str,
    series_instance_uid: str,
    model: ModelIdentity,
    kind: ObjectKind,
    *parts: str,
) -> UID:
    """Return the UID for one role of one result object.

    Parameters
    ----------
    root: str
        UID root ending in ``"."``.
    study_instance_uid: str
        The source study.
    series_instance_uid: str
        The source series the prediction was made on.
    model: ModelIdentity
        The model that made the result.
    kind: ObjectKind
        The result object kind.
    *parts: str
        The role within the object, e.g. ``"series"``, ``"instance"``, a label name.

    Returns
    -------
    pydicom.uid.UID
        A valid UID under ``root``, equal for equal inputs.

    Raises
    ------
    ValueError
        If ``study_instance_uid`` or ``series_instance_uid`` is empty: a UID derived
        from nothing would collide across studies or series.
    """
    if not study_instance_uid:
        raise ValueError("study_instance_uid must not be empty for a derived UID")
    if not series_instance_uid:
        raise ValueError("series_instance_uid must not be empty for a derived UID")
    sources = [
        study_instance_uid,
        series_instance_uid,
        model.name,
        model.version,
        kind.value,
        *parts,
    ]
    # pydicom joins the sources without a separator: join them ourselves, so that
    # ("ab", "c") and ("a", "bc") stay apart.
    return generate_uid(prefix=root, entropy_srcs=[_SEPARATOR.join(sources)])


def device_uid(root: str, device_name: str, model: ModelIdentity) -> UID:
    """The Device Observer UID of a model running on a node: one per (node, model).

    It names the observer, not the study, so the same model on the same node has the
    same UID in every report, and a reader can gather a device's reports by it.
    """
    sources = [device_name, model.name, model.version, "device"]
    return generate_uid(prefix=root, entropy_srcs=[_SEPARATOR.join(sources)])
