"""Shadow mode end to end: Orthanc sends studies, a shadow route keeps its results.

The node runs ``dicom-node serve`` on the demo CT model; the route goes from shadow to
live and back by rewriting the config and restarting, as an administrator would.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from dicom_node.db.schema import WorkState
from tests.conftest import get_free_port, run_cli
from tests.orchestration.node import node_document, run_node, wait_until, write_config
from tests.orchestration.pacs import series_by_modality
from tests.orchestration.studies import ct_series
from tests.orchestration.test_end_to_end import RESULT_TIMEOUT_S, rows, uids
from tests.peers import have_orthanc, run_orthanc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed"),
]


def ct_route(**keys: Any) -> list[dict[str, Any]]:
    return [{"name": "ct", "models": ["demo-ct-bone"], "match": {"Modality": "CT"}, **keys}]


def dicom_node(*args: str) -> str:
    run = run_cli(*args, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_shadow_to_live_and_back_is_a_config_change(tmp_path: Path) -> None:
    port = get_free_port()
    url = f"sqlite:///{tmp_path / 'node.db'}"
    config = tmp_path / "node.toml"
    studies = [ct_series(tmp_path / f"ct{n}", 3) for n in range(3)]
    study_uids = [uids(files[0])[0] for files in studies]
    with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", port)}) as pacs:

        def phase(index: int, routes: list[dict[str, Any]]) -> None:
            """Send study ``index`` with ``routes`` in the config; wait for its job."""
            document = node_document(tmp_path, pacs=pacs, port=port, database_url=url)
            write_config(config, {**document, "routes": routes})
            with run_node(config, port=port) as node:
                pacs.store("node", pacs.upload(studies[index]))
                wait_until(
                    lambda: (
                        len(jobs := rows(url)[0]) == index + 1
                        and all(j.state == WorkState.DONE for j in jobs)
                        and all(d.state == WorkState.DONE for d in rows(url)[1])
                    ),
                    RESULT_TIMEOUT_S,
                    lambda: f"job {index} done, deliveries done; log:\n{node.log_text()}",
                )

        phase(0, ct_route(mode="shadow", destinations=["pacs"]))
        phase(1, ct_route(destinations=["pacs"]))
        phase(2, ct_route(mode="shadow", destinations=["pacs"]))
        in_pacs = [set(series_by_modality(pacs, uid)) for uid in study_uids]
    assert in_pacs == [{"CT"}, {"CT", "SR", "SEG"}, {"CT"}]  # only the live study's results
    jobs, deliveries = rows(url)
    assert [j.mode for j in sorted(jobs, key=lambda j: j.id)] == ["shadow", "live", "shadow"]
    assert {d.job_id for d in deliveries} == {j.id for j in jobs if j.mode == "live"}
    for job in jobs:  # what drift monitoring compares: acquisition, what the network saw
        inputs = job.findings["series"][0]["inputs"]
        assert inputs["Manufacturer"] != "(none)" and inputs["SliceThickness"] is not None
        assert 0.0 < inputs["foreground_fraction"] < 1.0 and inputs["intensity_p95"] > 0.0

    found = json.loads(dicom_node("results", "-c", str(config), "--json"))
    assert [(r["study_uid"], r["mode"]) for r in found] == [
        (study_uids[0], "shadow"),
        (study_uids[1], "live"),
        (study_uids[2], "shadow"),
    ]
    for row in found:  # the demo model segments bone: a volume per study, files kept
        assert row["model"] == "demo-ct-bone" and row["task"] == "segmentation"
        assert row["volume_ml"] is not None and row["voxels"] > 0
        assert row["files"] and all(Path(path).is_file() for path in row["files"])
    lines = dicom_node("results", "-c", str(config)).splitlines()
    assert lines[0].split() == [
        "finished_at",
        "model",
        "mode",
        "study_uid",
        "label",
        "score",
        "positive",
    ]
    assert len(lines) == 4 and all(" ml " in line for line in lines[1:])  # bone volumes
    table = list(csv.DictReader(io.StringIO(dicom_node("results", "-c", str(config), "--csv"))))
    assert [r["study_uid"] for r in table] == study_uids
    assert dicom_node("results", "-c", str(config), "--model", "other", "--json").strip() == "[]"
    later = dicom_node("results", "-c", str(config), "--since", "2999-01-01", "--json")
    assert json.loads(later) == []
