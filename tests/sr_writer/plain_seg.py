"""A SEG built the plain way, with highdicom alone: the reference the node's SEG is
compared with (tests, benchmarks) and the annotations of labelled test sets."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid


def plain_seg(
    sources: Sequence[Dataset],
    mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8],
    *,
    label: str,
    manufacturer: str,
    model_name: str,
    version: str,
    automatic: bool = True,
    category: Code = codes.SCT.AnatomicalStructure,
    property_type: Code = codes.SCT.Bone,
    series_number: int = 1,
) -> hd.seg.Segmentation:
    """highdicom's binary ``Segmentation`` of ``mask`` (one frame per source, in the order
    of ``sources``) with one segment named ``label``.

    ``automatic``: made by the algorithm ``model_name`` ``version`` (which is also the
    device's model name and software version); otherwise drawn by hand.

    Raises
    ------
    ValueError
        When highdicom refuses the sources or the mask.
    """
    identification: dict[str, hd.AlgorithmIdentificationSequence] = {}
    if automatic:
        identification["algorithm_identification"] = hd.AlgorithmIdentificationSequence(
            name=model_name, family=codes.DCM.ArtificialIntelligence, version=version
        )
    values = hd.seg.SegmentAlgorithmTypeValues
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=property_type,
        algorithm_type=values.AUTOMATIC if automatic else values.MANUAL,
        **identification,
    )
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=model_name,
        software_versions=version,
        device_serial_number="1",
    )
