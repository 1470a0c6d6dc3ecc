"""Result objects: SR (TID 1500), SEG and heatmap images built with highdicom.

`dicom_node` uses only what this module exports.
"""

from sr_writer.amend import amend_report
from sr_writer.build import build_results
from sr_writer.enum import SegmentationKindValues
from sr_writer.errors import ResultBuildError, SourceMismatchError, UnsupportedSourceError
from sr_writer.warmup import warm_up

__all__ = [
    "ResultBuildError",
    "SegmentationKindValues",
    "SourceMismatchError",
    "UnsupportedSourceError",
    "amend_report",
    "build_results",
    "warm_up",
]
