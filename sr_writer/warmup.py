"""Start-up warm-up: pay highdicom's one-time cost before the first job does.

The first highdicom object in a process loads the standard's module and IOD tables
and pydicom's code dictionaries (about 0.25 s); a node that builds one small SR and
SEG from a synthetic two-slice CT at start-up keeps that out of its first job.
"""

from __future__ import annotations

import time

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from inference import CodedConcept, FrameRef, Label, ModelIdentity, Segmentation
from sr_writer.build import build_results

_SIZE = 16


def warm_up() -> float:
    """Build a throw-away SR and SEG in memory; return the seconds it took.

    Returns
    -------
    float
        Wall time of the warm-up, for the start-up log.

    Raises
    ------
    ResultBuildError
        Never for the built-in input; would mean highdicom is broken.
    """
    start = time.perf_counter()
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    sources = [_slice(index, study, series, frame_of_reference) for index in range(2)]
    masks = np.zeros((2, _SIZE, _SIZE, 1), dtype=bool)
    masks[:, 4:12, 4:12, 0] = True
    tissue = CodedConcept(codes.SCT.Tissue.value, "SCT", codes.SCT.Tissue.meaning)
    prediction = Segmentation(
        model=ModelIdentity(name="warm-up", version="0"),
        series_instance_uid=series,
        frames=tuple(FrameRef(str(ds.SOPInstanceUID)) for ds in sources),
        labels=(Label(name="tissue", finding=tissue, category=tissue),),
        masks=masks,
        pixel_spacing_mm=(1.0, 1.0),
        slice_spacing_mm=1.0,
    )
    build_results(prediction, sources)
    return time.perf_counter() - start


def _slice(index: int, study: str, series: str, frame_of_reference: str) -> Dataset:
    """A minimal CT slice: enough of the image modules for highdicom, no more."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "WARM^UP", "0", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20000101", "000000", "", ""
    ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "CT", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows = ds.Columns = _SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.zeros((_SIZE, _SIZE), dtype=np.int16).tobytes()
    return ds
