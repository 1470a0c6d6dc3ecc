"""What ``input_mask`` costs a chain step: reading the earlier step's SEG back and
restricting the series to it, against what the earlier step paid to write that SEG.

Run from the repository root: ``python -m benchmarks.chain_mask [--slices 300] [--repeats 5]``

The series and the mask are `benchmarks.results`' (512x512 CT slices with CT_small's
headers, an ellipsoid lesion); the baseline is `build_results` writing the SR and SEG
of that mask, measured in the same run, round-robin: compare ratios, not absolute
times, across machines. pydicom keeps a dataset's decoded pixels, so after the warm-up
round the restriction no longer pays for decoding the stored pixels once (about 0.2 s
per 100 uncompressed 512x512 slices here), a cost the model's own reading pays too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.results import ct_series, segmentation, timed
from dicom_node.work.step_input import restrict_to_mask, segment_mask
from sr_writer import build_results, warm_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    warm_up()
    sources = ct_series(args.slices)
    prediction = segmentation(sources)
    series_uid = str(sources[0].SeriesInstanceUID)
    sop_uids = [str(ds.SOPInstanceUID) for ds in sources]
    with tempfile.TemporaryDirectory() as folder:
        seg_path = Path(folder) / "seg.dcm"
        _, seg = build_results(prediction, sources)
        seg.save_as(seg_path, enforce_file_format=True)
        mask = segment_mask([seg_path], series_uid, "lesion", sop_uids)
        assert (mask == prediction.mask(0)).all(), "the SEG read back differs from the mask"
        n = args.slices
        cases: list[tuple[str, Callable[[], object]]] = [
            (
                f"baseline: SR + SEG written by the earlier step ({n} slices)",
                lambda: build_results(prediction, sources),
            ),
            (
                "input_mask: SEG read back per source instance",
                lambda: segment_mask([seg_path], series_uid, "lesion", sop_uids),
            ),
            (
                "input_mask: series restricted to the mask (copies)",
                lambda: restrict_to_mask(sources, mask),
            ),
        ]
        times = timed([function for _, function in cases], args.repeats)
    baseline = statistics.median(times[0][0])
    print(f"{'case':<60} {'median s':>9} {'best s':>8} {'x baseline':>10}")
    for (name, _), (wall, _cpu) in zip(cases, times, strict=True):
        median = statistics.median(wall)
        print(f"{name:<60} {median:>9.3f} {min(wall):>8.3f} {median / baseline:>10.2f}")


if __name__ == "__main__":
    main()
