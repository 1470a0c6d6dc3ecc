"""How often drift monitoring cries wolf, and how surely it sees a real shift.

    python -m benchmarks.drift_alarms                      # 1000 reference windows
    python -m benchmarks.drift_alarms --windows 300 --studies 50

A reference profile is built from 2000 generated studies
(`tests.orchestration.drift_streams`: vendor, model, kernel, body part, sex, age band,
kVp, slice thickness, pixel spacing, intensity quantiles and foreground fraction of
the preprocessed input, one label's score and call). Then, with the node's default
thresholds (``[drift]``: PSI 0.25, p < 0.001, at least 30 studies):

* ``--windows`` windows of ``--studies`` studies drawn from the same distribution:
  the share with any feature flagged is the false-alarm rate (per window), broken
  down by feature;
* for each shift of ``drift_streams.SHIFTS`` (a new vendor or kernel, lower kVp,
  older patients, an intensity offset, a higher positive rate, higher scores), a
  fifth as many shifted windows: the share flagged on the shift's own feature.

Seeded: the same arguments print the same table on any machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from dicom_node.config import DriftSection
from dicom_node.work.drift import Profile, build_profile, compare, read_profile
from tests.orchestration.drift_streams import SHIFTS, stream


def _flagged(
    profile: Profile, records: list[dict[str, object]], settings: DriftSection
) -> set[str]:
    rows = compare("ct", profile, records, settings)
    return {row.feature for row in rows if row.status == "drift"}


def main() -> None:
    """Print the false-alarm and detection table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=1000, help="reference windows")
    parser.add_argument("--studies", type=int, default=100, help="studies per window")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    settings = DriftSection(window_studies=args.studies)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.json"
        document = build_profile("ct", "1.0", stream(np.random.default_rng(0), 2000))
        path.write_text(json.dumps(document), encoding="utf-8")
        profile = read_profile(path, "ct", ["nodule"])
    rng = np.random.default_rng(args.seed)
    by_feature: Counter[str] = Counter()
    alarms = 0
    for _ in range(args.windows):
        found = _flagged(profile, stream(rng, args.studies), settings)
        alarms += bool(found)
        by_feature.update(found)
    print(f"{args.windows} windows of {args.studies} studies, thresholds {settings}")
    print(f"{'stream':24} {'feature':24} {'windows':>8} {'flagged':>8}")
    print(f"{'reference':24} {'(any)':24} {args.windows:>8} {alarms / args.windows:>8.1%}")
    for feature, count in by_feature.most_common():
        print(f"{'reference':24} {feature:24} {args.windows:>8} {count / args.windows:>8.1%}")
    shifted_windows = max(1, args.windows // 5)
    for name, (shift, feature) in SHIFTS.items():
        hits = sum(
            feature in _flagged(profile, stream(rng, args.studies, **shift), settings)
            for _ in range(shifted_windows)
        )
        print(f"{name:24} {feature:24} {shifted_windows:>8} {hits / shifted_windows:>8.1%}")


if __name__ == "__main__":
    main()
