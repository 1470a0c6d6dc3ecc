"""Coded option values for result building, coerced from ``str | Enum``."""

from __future__ import annotations

from enum import Enum


class SegmentationKindValues(Enum):
    """How SEG pixels encode the model's output.

    BINARY writes the thresholded masks (one bit a pixel, read by every viewer);
    FRACTIONAL writes the model's probabilities as 8-bit values, for viewers and
    pipelines that use the soft output.
    """

    BINARY = "BINARY"
    FRACTIONAL = "FRACTIONAL"

    @classmethod
    def _missing_(cls, value: object) -> SegmentationKindValues | None:
        """Accept the lower case a config file is likely to use."""
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        return None


class ObjectKind(Enum):
    """The kinds of result object; each gets its own deterministic series.

    The values are hashed into the derived UIDs: changing one would make the next
    run of a job add objects beside the archived ones instead of replacing them.
    """

    SR = "SR"
    SEG = "SEG"
    HEATMAP_SC = "HEATMAP_SC"
    PARAMETRIC_MAP = "PARAMETRIC_MAP"
