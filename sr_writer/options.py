"""The node-level choices for result objects, checked once at the boundary."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.uid import PYDICOM_ROOT_UID

from sr_writer.enum import SegmentationKindValues

_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_MAX_ROOT_LENGTH = 32
"""Leaves 32 of the 64 UID characters for the hash, enough to make collisions moot."""


@dataclass(frozen=True)
class ResultOptions:
    """How the node labels and encodes its result objects.

    Parameters
    ----------
    manufacturer: str | None
        Manufacturer written as the creating equipment; ``None`` takes the model's.
    device_name: str
        The node's name, written as the SR observer device and the SEG's device
        serial number, so that a reader can tell which node made an object.
    institution_name: str | None
        Institution written into the equipment module, where known.
    segmentation_kind: SegmentationKindValues
        Binary (default) or fractional SEG.
    parametric_map: bool
        Also write heatmaps as a Parametric Map, for viewers that overlay it.
    uid_root: str
        Root of the derived UIDs, ending in ``"."``; an organisation's own root in
        production, pydicom's by default.
    """

    manufacturer: str | None = None
    device_name: str = "AINODE"
    institution_name: str | None = None
    segmentation_kind: SegmentationKindValues = SegmentationKindValues.BINARY
    parametric_map: bool = False
    uid_root: str = PYDICOM_ROOT_UID

    def __post_init__(self) -> None:
        if not _UID_ROOT.match(self.uid_root) or len(self.uid_root) > _MAX_ROOT_LENGTH:
            raise ValueError(
                f"uid_root must be dotted digits ending in '.' and at most "
                f"{_MAX_ROOT_LENGTH} characters, got {self.uid_root!r}"
            )
        if not self.device_name.strip():
            raise ValueError(f"device_name must not be empty, got {self.device_name!r}")
        object.__setattr__(
            self, "segmentation_kind", SegmentationKindValues(self.segmentation_kind)
        )
