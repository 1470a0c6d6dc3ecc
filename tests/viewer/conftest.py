"""Fixtures for the OHIF tests: Orthanc with DICOMweb, the one-origin site, the studies.

One Orthanc and one site serve the whole module; each study is uploaded once, with the
node's results for it, and opened in one browser session whose steps the tests assert
on. Screenshots go to ``test-artifacts/viewer/`` (git-ignored) so a person can look.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, get_free_port
from tests.peers import DICOMWEB_PLUGIN, Orthanc, run_orthanc
from tests.viewer.browser import OHIF_DIST, missing_tools
from tests.viewer.node_results import ViewerStudy, cr_study, ct_study
from tests.viewer.ohif_site import serve_ohif

ARTIFACTS = REPO_ROOT / "test-artifacts" / "viewer"


@dataclass(frozen=True)
class Site:
    """The archive (Orthanc) and the viewer site in front of it."""

    pacs: Orthanc
    url: str

    def upload(self, study: ViewerStudy, folder: Path) -> None:
        """Store the study's sources and results in the archive."""
        self.pacs.upload(study.write(folder))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Orthanc with its DICOMweb plugin, and OHIF plus a DICOMweb proxy on one origin."""
    reason = missing_tools()
    if reason is not None:
        pytest.skip(reason)
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc's DICOMweb plugin is not installed at {DICOMWEB_PLUGIN}")
    workdir = tmp_path_factory.mktemp("viewer")
    dicomweb = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with (
        run_orthanc(workdir, plugins=[DICOMWEB_PLUGIN], extra=dicomweb) as pacs,
        serve_ohif(OHIF_DIST, pacs.url, get_free_port()) as url,
    ):
        yield Site(pacs, url)


@pytest.fixture(scope="module")
def ct(site: Site, tmp_path_factory: pytest.TempPathFactory) -> ViewerStudy:
    """The CT series with the bone model's SR and SEG, stored in the archive."""
    study = ct_study()
    site.upload(study, tmp_path_factory.mktemp("ct"))
    return study


@pytest.fixture(scope="module")
def cr(site: Site, tmp_path_factory: pytest.TempPathFactory) -> ViewerStudy:
    """The chest radiograph with the classifier's SR and heatmap, stored in the archive."""
    study = cr_study()
    site.upload(study, tmp_path_factory.mktemp("cr"))
    return study
