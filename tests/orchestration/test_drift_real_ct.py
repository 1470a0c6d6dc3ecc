"""Drift on real DICOM: a profile from one vendor's CTs, then studies from another's.

pydicom-data holds real CT slices from GE (``CT_small.dcm``: LightSpeed RHAPSODE,
STANDARD kernel) and SIEMENS (``bad_sequence.dcm``: SOMATOM Definition AS+, B30s,
neck). The demo bone model's profile is built by ``dicom-node profile`` from GE
studies; the node's window then holds further GE studies (nothing drifts), then
GE studies 100 HU brighter (flagged on the intensity statistics alone), then SIEMENS
studies, which ``dicom-node drift`` flags on the vendor and on what else differs
(kernel, pixel spacing, what the network saw), and not on what does not (kVp, slice
thickness, the positive rate).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.work.findings import series_findings
from inference import load_model
from tests.conftest import run_cli
from tests.orchestration.drift_streams import add_done_jobs
from tests.orchestration.node import node_document, write_config
from tests.orchestration.studies import MODELS, ct_series

pytestmark = [
    pytest.mark.slow,  # runs the demo CT model on 32 short series
    # pydicom-data's SIEMENS slice carries hash-like UIDs and a 64-character SH value.
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
]
GE, SIEMENS = "CT_small.dcm", "bad_sequence.dcm"
STUDIES = 8  # 8 against 8: the least for which a KS test can reach p < 0.001


def write_studies(folder: Path, template: str, offset_hu: float = 0.0) -> list[list[Path]]:
    """``STUDIES`` two-slice studies of ``template``; ``offset_hu`` shifts every value's
    Rescale Intercept, as a miscalibrated scanner or a changed conversion would."""
    studies = [ct_series(folder / f"study{n}", 2, template=template) for n in range(STUDIES)]
    for path in (path for files in studies for path in files if offset_hu):
        ds = pydicom.dcmread(path)
        ds.RescaleIntercept = float(ds.RescaleIntercept) + offset_hu
        ds.save_as(path)
    return studies


def records(package: Path, studies: list[list[Path]]) -> list[dict[str, Any]]:
    """What the worker records per job: `series_findings` of the model's prediction."""
    out = []
    with load_model(package, backend="onnxruntime", device="cpu") as model:
        for files in studies:
            datasets = [pydicom.dcmread(path) for path in files]
            out.append(series_findings(model.predict(datasets), datasets[0]))
    return out


def drift_rows(config: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    result = run_cli("drift", "-c", config, "--model", "demo-ct-bone", "--json")
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, {row["feature"]: row for row in json.loads(result.stdout)}


def test_another_vendors_studies_are_flagged_on_the_vendor(tmp_path: Path) -> None:
    package = tmp_path / "demo-ct-bone"
    shutil.copytree(MODELS / "demo-ct-bone", package)
    write_studies(tmp_path / "reference", GE)
    built = run_cli(
        "profile", "--model", package, "--data", tmp_path / "reference", "--backend",
        "onnxruntime", "--no-progress",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    profile = json.loads((package / "profile.json").read_text())
    assert profile["categorical"]["Manufacturer"] == {"GE MEDICAL SYSTEMS": 1.0}
    assert profile["categorical"]["AgeBand"] == {"0-17": 1.0}  # PatientAge 000Y

    document = node_document(
        tmp_path, pacs=None, drift={"window_studies": STUDIES, "min_studies": STUDIES}
    )
    document["models"][0]["path"] = package
    config = write_config(tmp_path / "node.toml", document)
    engine = create_db_engine(document["node"]["database_url"])
    try:
        sessions = session_factory(engine)
        add_done_jobs(
            sessions, records(package, write_studies(tmp_path / "ge", GE)), model="demo-ct-bone"
        )
        status, rows = drift_rows(config)
        assert status == 0 and {row["status"] for row in rows.values()} == {"ok"}

        offset = records(package, write_studies(tmp_path / "offset", GE, offset_hu=100.0))
        add_done_jobs(sessions, offset, model="demo-ct-bone")
        status, rows = drift_rows(config)
        drifted = {name for name, row in rows.items() if row["status"] == "drift"}
        # Same scanner, same headers, 100 HU brighter: seen in what the network saw (the
        # foreground fraction is offset-invariant) and in the bone it finds, nowhere else.
        assert status == 3
        assert drifted == {
            "intensity_p5",
            "intensity_p50",
            "intensity_p95",
            "score:high-attenuation structure",
        }

        siemens = records(package, write_studies(tmp_path / "siemens", SIEMENS))
        add_done_jobs(sessions, siemens, model="demo-ct-bone")
    finally:
        engine.dispose()
    status, rows = drift_rows(config)
    assert status == 3
    drifted = {name for name, row in rows.items() if row["status"] == "drift"}
    assert drifted == {
        # the scanner and the population: a category the profile never saw (PSI 18.4)
        "Manufacturer",
        "ManufacturerModelName",
        "ConvolutionKernel",
        "BodyPartExamined",
        "PatientSex",
        "AgeBand",
        # what the network saw and found: finer pixels, other intensities, more bone
        "PixelSpacing",
        "intensity_p5",
        "intensity_p50",
        "intensity_p95",
        "foreground_fraction",
        "score:high-attenuation structure",
    }
    assert rows["Manufacturer"]["current"] == "SIEMENS 100%"
    # Both at 120 kVp, both written 2.5 mm thick, bone found in every study: no drift.
    assert {rows[f]["status"] for f in ("KVP", "SliceThickness")} == {"ok"}
    assert rows["positive_rate:high-attenuation structure"]["status"] == "ok"
