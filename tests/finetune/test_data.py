"""Labels CSV and DICOM folder to training tensors through the node's preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.finetune.config import parse_config
from inference.finetune.data import LabelFileError, load_training_data, read_labels
from inference.finetune.synthetic import MASS, NODULE, write_chest_set


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_labels_per_study_or_series(tmp_path: Path) -> None:
    level, targets = read_labels(
        _csv(tmp_path, "StudyInstanceUID,a,b,note\n1.2,1,0,x\n1.3,no,yes,\n"), ["a", "b"]
    )
    assert level == "study"
    assert targets == {"1.2": (1.0, 0.0), "1.3": (0.0, 1.0)}
    level, _ = read_labels(_csv(tmp_path, "SeriesInstanceUID,a\n1.2,1\n"), ["a"])
    assert level == "series"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PatientID,a\nX,1\n", r"labels.csv:1: needs exactly one of"),
        ("StudyInstanceUID,b\n1.2,1\n", r"label column\(s\) \['a'\] missing"),
        ("StudyInstanceUID,a\n1.2,maybe\n", r"labels.csv:2: column 'a': 'maybe' is not 0/1"),
        ("StudyInstanceUID,a\n1.2,1\n1.2,0\n", r"labels.csv:3: 1.2 repeated with other labels"),
        ("StudyInstanceUID,a\n,1\n", r"labels.csv:2: empty StudyInstanceUID"),
        ("StudyInstanceUID,a\n", r"no label rows"),
    ],
)
def test_label_file_errors_name_line_and_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LabelFileError, match=message):
        read_labels(_csv(tmp_path, text), ["a"])


def _config(tmp_path: Path) -> dict[str, object]:
    code = {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}
    return {
        "model": {"name": "t", "version": "1", "task": "classification", "intended_use": "t"},
        "input": {
            "modalities": ["CR"],
            "size": [24, 32],
            "resize": "letterbox",
            "intensity": {"method": "minmax"},
        },
        "output": {
            "labels": [{"name": n, "finding": code, "category": code} for n in ("nodule", "mass")]
        },
    }


def test_every_labelled_study_is_preprocessed_with_patient_headers(tmp_path: Path) -> None:
    cases = write_chest_set(
        tmp_path / "set", 6, (NODULE, MASS), size=40, seed=4, studies_per_patient=2
    )
    (tmp_path / "set" / "dicom" / "notes.txt").write_text("not DICOM", encoding="utf-8")
    config = parse_config(_config(tmp_path), tmp_path / "train.toml")
    data = load_training_data(
        tmp_path / "set" / "dicom", config.spec, (40, 65), tmp_path / "set" / "labels.csv"
    )
    assert data.level == "study" and len(data.cases) == 12
    assert data.images.shape == (12, 1, 24, 32) and data.images.dtype == np.float32
    # Letterbox: 40 x 40 into 24 x 32 keeps the aspect ratio, zero padding either side.
    assert np.all(data.images[:, :, :, :4] == 0) and np.all(data.images[:, :, :, -4:] == 0)
    by_key = {c.study_uid: c for c in cases}
    for case, target in zip(data.cases, data.targets[data.case_of], strict=True):
        truth = by_key[case.key]
        assert case.patient == truth.patient_id and case.sex == truth.sex
        assert case.age_band == ("0-39" if truth.age < 40 else "40-64" if truth.age < 65 else "65+")
        assert tuple(target) == tuple(float(n in truth.findings) for n in ("nodule", "mass"))
    np.testing.assert_allclose(data.spacing, 40 * 0.5 / 24)  # mm per model pixel
    summary = data.summary()
    assert "12 study(s) from 6 patient(s)" in summary
    assert "nodule:" in summary and "mass:" in summary and "% positive" in summary


def test_labels_that_match_no_study_are_an_error(tmp_path: Path) -> None:
    write_chest_set(tmp_path / "set", 2, (NODULE,), size=32, seed=1)
    config = parse_config(_config(tmp_path), tmp_path / "train.toml")
    labels = _csv(tmp_path, "StudyInstanceUID,nodule,mass\n9.9.9,1,0\n")
    with pytest.raises(ValueError, match="none of the 1 study UIDs"):
        load_training_data(tmp_path / "set" / "dicom", config.spec, (40,), labels)
    with pytest.raises(ValueError, match="classification needs a labels CSV"):
        load_training_data(tmp_path / "set" / "dicom", config.spec, (40,))


def test_inputs_left_out_are_counted_and_listed_by_kind(tmp_path: Path) -> None:
    write_chest_set(tmp_path / "set", 6, (NODULE, MASS), size=32, seed=2)
    dicom, labels = tmp_path / "set" / "dicom", tmp_path / "set" / "labels.csv"
    header, *rows = labels.read_text(encoding="utf-8").splitlines()
    unlabelled = rows[0].split(",")[0]
    labels.write_text("\n".join([header, *rows[1:], "9.9.9,1,0"]) + "\n", encoding="utf-8")
    files = sorted(dicom.glob("*.dcm"))
    other = pydicom.dcmread(files[1])
    other.Modality = "MR"
    other.save_as(files[1])
    (dicom / "broken.dcm").write_bytes(b"\0" * 64)
    config = parse_config(_config(tmp_path), tmp_path / "train.toml")
    data = load_training_data(dicom, config.spec, (40,), labels)
    assert data.skipped.counts() == {
        "no_label": 1,
        "no_dicom": 1,
        "other_modality": 1,
        "unreadable": 1,
        "not_prepared": 1,  # the study whose only series is MR
    }
    items = data.skipped.items
    assert items["no_label"] == [f"study {unlabelled}"]
    assert items["no_dicom"] == ["study 9.9.9"]
    assert items["other_modality"] == [
        f"series {other.SeriesInstanceUID}: Modality 'MR' not in ['CR']"
    ]
    assert items["unreadable"][0].startswith(f"{dicom / 'broken.dcm'}: ")
    assert len(data.cases) == 4
    summary = data.summary()
    assert "skipped: 1 in the DICOM folder with no label (no_label), e.g. study" in summary
    assert "skipped: 1 of a modality the model does not take (other_modality)" in summary
