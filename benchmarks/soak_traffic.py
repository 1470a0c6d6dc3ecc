"""The soak run's traffic: a hospital's mix of studies, written as files with fresh UIDs.

Every instance comes from a real template of pydicom's test data (the 512 x 512 CT
``693_UNCI.dcm``, the MR ``MR_small.dcm``, the CR header of ``RG1_UNCI.dcm`` around the
demo models' synthetic chest radiograph) with new study, series and SOP Instance UIDs,
so that the node indexes, routes and runs its models on each as on real traffic.

The mix (:func:`plan_traffic`), for ``instances`` in all:

- CT series of ``ct_slices`` (100-500) slices, one study each, half sent by Orthanc, half
  by DCMTK ``storescu``;
- split studies: one CT study whose second series arrives ``split_gap`` seconds after the
  first, on another association (a late reconstruction, a second sender);
- radiographs (one CR instance per study) and an MR study (three series), sent by a
  modality (pynetdicom) that times every C-STORE;
- a few duplicates (instances sent again by ``storescu`` on the next association) and a
  few bad files (no Study Instance UID; a Study Instance UID that breaks the UID
  syntax), which the node must refuse with a failure status and nothing else.

Sends are spaced so that the whole mix arrives at ``rate`` instances per second on
average, like a day's traffic compressed: each send's planned start is the number of
instances planned before it over ``rate``.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.orchestration.studies import pydicom_file, radiograph

ORTHANC, STORESCU, MODALITY = "orthanc", "storescu", "modality"
# Modalities the soak config routes to a model (the others complete and are skipped).
ROUTED_MODALITIES = frozenset({"CT", "CR"})
MR_SERIES, MR_SLICES = 3, 20
# Duplicates come in small groups, each right after the send it repeats (a sender that
# re-sends after a lost answer), while the node still holds that study: a study re-sent
# after retention removed it is a new study, received and processed again.
DUPLICATES_PER_SEND = 5


@dataclass
class Send:
    """One association's worth of files, for one sender, at a planned time."""

    sender: str  # ORTHANC, STORESCU or MODALITY
    kind: str  # what it is, for the report ("ct", "split part 2", "duplicates", ...)
    files: list[Path]
    at: float = 0.0  # seconds after the start of the run


@dataclass
class Traffic:
    """The sends, and what the node must make of them."""

    sends: list[Send] = field(default_factory=list)
    # Study UID -> the SOP Instance UIDs the node must store (once each).
    expected: dict[str, set[str]] = field(default_factory=dict)
    # Study UID -> modality, for which studies a route must run a model on.
    modality: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    bad: int = 0

    @property
    def instances(self) -> int:
        """Every C-STORE the senders make (duplicates and bad files included)."""
        return sum(len(send.files) for send in self.sends)

    def routed_studies(self) -> set[str]:
        """The studies a route runs a model on."""
        return {uid for uid, m in self.modality.items() if m in ROUTED_MODALITIES}


class SeriesWriter:
    """Writes series from one template dataset, restamped with fresh UIDs per instance.

    The template is read once and changed in place between saves (no copy of its pixel
    data per instance), so that 20,000 files take minutes, not tens of minutes.
    """

    def __init__(self, template: Dataset, folder: Path, prefix: str) -> None:
        self.template = template
        self.folder = folder
        self.prefix = prefix  # file names: prefix and a running number
        self.written = 0

    def series(
        self, count: int, study_uid: str, series_number: int = 1
    ) -> tuple[list[Path], list[str]]:
        """``count`` instances of a new series 2.5 mm apart in ``study_uid``; paths, SOP UIDs."""
        ds = self.template
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        if "ImagePositionPatient" in ds:  # a cross-sectional series: its own frame
            ds.FrameOfReferenceUID = generate_uid()
        ds.SeriesNumber = series_number
        x, y, _ = (float(v) for v in ds.get("ImagePositionPatient", [0, 0, 0]))
        paths, uids = [], []
        for index in range(count):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = index + 1
            if "ImagePositionPatient" in ds:
                ds.ImagePositionPatient = [x, y, 2.5 * index]
                ds.SliceLocation = 2.5 * index
            self.written += 1
            path = self.folder / f"{self.prefix}{self.written:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            uids.append(str(ds.SOPInstanceUID))
        return paths, uids


def _series_sizes(total: int, low: int, high: int, rng: random.Random) -> Iterator[int]:
    """CT series sizes in [low, high] adding up to ``total`` (the last one may be smaller,
    never under a quarter of ``low``: that remainder joins the one before)."""
    sizes: list[int] = []
    left = total
    while left >= low:
        size = min(left, rng.randint(low, high))
        sizes.append(size)
        left -= size
    if sizes and left < low // 4:
        sizes[-1] += left
    elif left:
        sizes.append(left)
    yield from sizes


def plan_traffic(
    folder: Path,
    instances: int,
    *,
    ct_slices: tuple[int, int] = (100, 500),
    split_gap: float = 120.0,
    rate: float = 10.0,
    seed: int = 15,
) -> Traffic:
    """Write the mix (module docstring) under ``folder`` and plan its sends.

    Raises
    ------
    ValueError
        When ``instances`` is too small for one study of each kind.
    """
    rng = random.Random(seed)
    radiographs = max(2, instances // 100)
    mr_studies = max(1, instances // 10000)
    duplicates = max(3, instances // 1000)
    bad = max(2, instances // 5000)
    ct_total = instances - radiographs - mr_studies * MR_SERIES * MR_SLICES - duplicates - bad
    if ct_total < 2 * ct_slices[0]:
        raise ValueError(f"{instances} instances leave too few for two CT series ({ct_total})")
    folder.mkdir(parents=True, exist_ok=True)
    traffic = Traffic(duplicates=duplicates, bad=bad)
    ct = SeriesWriter(pydicom.dcmread(pydicom_file("693_UNCI.dcm")), folder, "ct")
    mr = SeriesWriter(pydicom.dcmread(pydicom_file("MR_small.dcm")), folder, "mr")
    cr = SeriesWriter(pydicom.dcmread(radiograph(folder / "template")), folder, "cr")

    def study(writer: SeriesWriter, modality: str, counts: list[int]) -> list[list[Path]]:
        uid = generate_uid()
        traffic.modality[uid] = modality
        parts = []
        for number, count in enumerate(counts, start=1):
            paths, uids = writer.series(count, uid, number)
            traffic.expected.setdefault(uid, set()).update(uids)
            parts.append(paths)
        return parts

    sends: list[Send] = []
    sizes = list(_series_sizes(ct_total, *ct_slices, rng))
    splits = [
        study(ct, "CT", [sizes[2 * index], sizes[2 * index + 1]])
        for index in range(max(1, len(sizes) // 12))
    ]
    for index, size in enumerate(sizes[2 * len(splits) :]):
        [paths] = study(ct, "CT", [size])
        sends.append(Send((ORTHANC, STORESCU)[index % 2], "ct", paths))
    for _ in range(radiographs):
        sends.extend(Send(MODALITY, "radiograph", p) for p in study(cr, "CR", [1]))
    for _ in range(mr_studies):
        series = study(mr, "MR", [MR_SLICES] * MR_SERIES)
        sends.append(Send(MODALITY, "mr", [p for paths in series for p in paths]))
    rng.shuffle(sends)
    first_parts = [Send(STORESCU, "split part 1", first) for first, _ in splits]
    for send in first_parts:
        sends.insert(rng.randrange(len(sends) + 1), send)
    stored = [s for s in sends if s.sender == STORESCU]
    groups = [DUPLICATES_PER_SEND] * (duplicates // DUPLICATES_PER_SEND)
    groups += [duplicates % DUPLICATES_PER_SEND] if duplicates % DUPLICATES_PER_SEND else []
    for source, count in zip(rng.sample(stored, len(groups)), groups, strict=True):
        again = Send(STORESCU, "duplicates", rng.sample(source.files, count))
        sends.insert(sends.index(source) + 1, again)
    sends.insert(rng.randrange(len(sends)), Send(MODALITY, "bad", _bad_files(folder, bad)))
    _schedule(sends, rate)
    for send, (_, second) in zip(first_parts, splits, strict=True):
        sends.append(Send(ORTHANC, "split part 2", second, send.at + split_gap))
    traffic.sends = sorted(sends, key=lambda send: send.at)
    return traffic


def _bad_files(folder: Path, count: int) -> list[Path]:
    """Instances the node must refuse: no Study Instance UID (0xC220), or one that breaks
    the UID syntax (0xC223, a leading zero); alternately."""
    template = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    paths = []
    for index in range(count):
        ds = template.copy()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"bad{index:03d}.dcm"
        with warnings.catch_warnings():  # pydicom warns of the value we mean to break
            warnings.simplefilter("ignore")
            if index % 2:
                ds.StudyInstanceUID = "1.2.840.0123"
            else:
                del ds.StudyInstanceUID
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _schedule(sends: list[Send], rate: float) -> None:
    """Planned starts: the instances planned before each send over ``rate``."""
    planned = 0
    for send in sends:
        send.at = planned / rate
        planned += len(send.files)
