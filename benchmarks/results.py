"""Time result building for a 300-slice 512x512 CT: SEG, SR, heatmap, classification SR.

Run from the repository root: ``python -m benchmarks.results [--slices 300] [--repeats 5]``

The source series is generated from CT_small's headers (512x512 slices, new UIDs
and positions), and the baseline is highdicom's plain ``Segmentation`` call on the
same mask, measured in the same run: compare ratios, not absolute times, across
machines. Cases run round-robin, ``--repeats`` rounds after one warm-up round;
the table shows each case's median and best wall time and median CPU time.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import highdicom as hd
import numpy as np
import pydicom
from highdicom import _standard_utils
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from inference import (
    Classification,
    CodedConcept,
    FrameRef,
    Heatmap,
    Label,
    LabelScore,
    ModelIdentity,
    Segmentation,
)
from sr_writer import build_results, warm_up
from sr_writer.heatmap import build_overlay
from sr_writer.options import ResultOptions
from sr_writer.seg import build_segmentation
from sr_writer.sources import SourceSeries
from sr_writer.sr import build_report
from tests.sr_writer.plain_seg import plain_seg

SIZE = 512
MODEL = ModelIdentity(name="bench-ct-lesion", version="1.0.0")


def ct_series(slices: int) -> list[Dataset]:
    """A CT series with CT_small's headers and 512x512 synthetic pixels."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    template.Rows = template.Columns = SIZE
    template.PixelSpacing = [0.7, 0.7]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.42) ** 2).astype(np.int16)
    pixels = (body * 1040 - 1000).astype(np.int16)
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 16, 15
    template.PixelRepresentation = 1
    del template.PixelData
    pixel_data = pixels.tobytes()
    study, series = generate_uid(), generate_uid()
    result = []
    for index in range(slices):
        ds = copy.deepcopy(template)
        ds.PixelData = pixel_data
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-180.0, -180.0, -index * 1.25]
        ds.SliceThickness = 1.25
        result.append(ds)
    return result


def lesion_label() -> Label:
    def concept(code: pydicom.sr.coding.Code) -> CodedConcept:
        return CodedConcept(code.value, code.scheme_designator, code.meaning)

    return Label(
        name="lesion",
        finding=concept(codes.SCT.Lesion),
        category=concept(codes.SCT.MorphologicallyAbnormalStructure),
    )


def segmentation(sources: list[Dataset]) -> Segmentation:
    """A 140-slice ellipsoid lesion in the middle of the series."""
    slices = len(sources)
    zz, yy, xx = np.ogrid[:slices, :SIZE, :SIZE]
    ellipsoid = (
        ((zz - slices / 2) / (slices * 0.23)) ** 2
        + ((yy - 220) / 90.0) ** 2
        + ((xx - 300) / 70.0) ** 2
    ) <= 1.0
    return Segmentation(
        model=MODEL,
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        frames=tuple(FrameRef(str(ds.SOPInstanceUID)) for ds in sources),
        labels=(lesion_label(),),
        masks=ellipsoid[..., np.newaxis],
        pixel_spacing_mm=(0.7, 0.7),
        slice_spacing_mm=1.25,
    )


def classification(sources: list[Dataset], with_heatmap: bool) -> Classification:
    label = lesion_label()
    key = sources[len(sources) // 2]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    values = np.exp(-((yy - 200) ** 2 + (xx - 300) ** 2) / (2 * 40.0**2)).astype(np.float32)
    heatmaps = (Heatmap(label, FrameRef(str(key.SOPInstanceUID)), values),) if with_heatmap else ()
    return Classification(
        model=MODEL,
        series_instance_uid=str(key.SeriesInstanceUID),
        frames=tuple(FrameRef(str(ds.SOPInstanceUID)) for ds in sources),
        scores=(LabelScore(label, 0.91, True),),
        heatmaps=heatmaps,
    )


@contextmanager
def highdicom_as_installed() -> Iterator[None]:
    """highdicom's own IOD lookup for the duration, as a plain script has it.

    `sr_writer` memoizes it process-wide (`sr_writer.iod_lookup`) once it builds a SEG;
    the baseline must not get that for free.
    """
    memoized = _standard_utils.is_attribute_in_iod
    _standard_utils.is_attribute_in_iod = getattr(memoized, "__wrapped__", memoized)
    try:
        yield
    finally:
        _standard_utils.is_attribute_in_iod = memoized


def plain_highdicom_seg(sources: list[Dataset], prediction: Segmentation) -> hd.seg.Segmentation:
    """The baseline: highdicom's Segmentation on the same C-contiguous uint8 mask."""
    mask = np.ascontiguousarray(prediction.mask(0), dtype=np.uint8)
    with highdicom_as_installed():
        return plain_seg(
            sources,
            mask,
            label=prediction.labels[0].name,
            manufacturer="bench",
            model_name=MODEL.name,
            version=MODEL.version,
            category=codes.SCT.MorphologicallyAbnormalStructure,
            property_type=codes.SCT.Lesion,
        )


def timed(
    functions: list[Callable[[], object]], repeats: int
) -> list[tuple[list[float], list[float]]]:
    """(wall, CPU) times of each function, ``repeats`` rounds after a warm-up round.

    Round-robin, so that load from other processes falls on every case alike and
    the ratios stay meaningful on a busy machine; the process CPU time is what the
    (single-threaded) build costs, close to the wall time on an idle machine.
    """
    for function in functions:
        function()
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in functions]
    for _ in range(repeats):
        for function, (wall, cpu) in zip(functions, times, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    first_warm_up = warm_up()
    sources = ct_series(args.slices)
    series = SourceSeries(sources)
    options = ResultOptions()
    seg_prediction = segmentation(sources)
    seg_result = build_segmentation(seg_prediction, series, options)
    heat = classification(sources, with_heatmap=True)
    plain = classification(sources, with_heatmap=False)
    one_slice = [sources[len(sources) // 2]]
    single = classification(one_slice, with_heatmap=False)
    n = args.slices

    def report() -> object:
        return build_report(seg_prediction, series, options, segmentation=seg_result)

    cases: list[tuple[str, Callable[[], object], bool]] = [
        (
            f"baseline: highdicom Segmentation ({n} frames)",
            lambda: plain_highdicom_seg(sources, seg_prediction),
            True,
        ),
        (
            f"SEG, binary ({n} frames)",
            lambda: build_segmentation(seg_prediction, series, options),
            True,
        ),
        ("SR for the segmentation", report, False),
        (
            "build_results(segmentation): SR + SEG",
            lambda: build_results(seg_prediction, sources),
            True,
        ),
        (
            "heatmap Secondary Capture (512x512)",
            lambda: build_overlay(heat.heatmaps[0], series, MODEL, options, 1),
            False,
        ),
        (
            "build_results(classification, 1 image): SR",
            lambda: build_results(single, one_slice),
            False,
        ),
        (
            f"build_results(classification, {n} images): SR",
            lambda: build_results(plain, sources),
            False,
        ),
        (
            f"build_results(classification, {n} images): SR + SC",
            lambda: build_results(heat, sources),
            False,
        ),
    ]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs: compare ratios, not times")
    print(f"warm_up() at process start: {first_warm_up * 1000:.0f} ms")
    times = timed([function for _, function, _ in cases], args.repeats)
    baseline = statistics.median(times[0][1])
    print(f"{'what':52} {'wall ms':>8} {'best':>7} {'CPU ms':>8} {'CPU/baseline':>13}")
    for (name, _, compare), (wall, cpu) in zip(cases, times, strict=True):
        cpu_median = statistics.median(cpu)
        ratio = f"{cpu_median / baseline:.2f}x" if compare else "-"
        print(
            f"{name:52} {statistics.median(wall) * 1000:8.1f} {min(wall) * 1000:7.1f} "
            f"{cpu_median * 1000:8.1f} {ratio:>13}"
        )


if __name__ == "__main__":
    main()
