"""Fixtures for the OHIF tests: the archive, the node, the one-origin site, the studies.

One Orthanc (the archive, with its DICOMweb plugin), one ``dicom-node serve`` (the
demo models on ONNX Runtime, results routed back to the archive) and one site serve
the whole module; each study goes through the node once and is opened in one browser
session whose steps the tests assert on. Screenshots go to ``test-artifacts/viewer/``
(git-ignored) so a person can look at them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, get_free_port
from tests.orchestration.node import NodeProcess, node_document, run_node, write_config
from tests.orchestration.studies import ct_series
from tests.peers import DICOMWEB_PLUGIN, Orthanc, have_dicomweb_plugin, run_orthanc
from tests.viewer.browser import OHIF_DIST, missing_tools
from tests.viewer.node_results import (
    NODE_MODALITY,
    ViewerStudy,
    chest_radiograph,
    through_the_node,
)
from tests.viewer.ohif_site import serve_ohif

ARTIFACTS = REPO_ROOT / "test-artifacts" / "viewer"
CT_SLICES = 8


@dataclass(frozen=True)
class Site:
    """The archive, the node sending it results, and the viewer site in front of it."""

    pacs: Orthanc
    node: NodeProcess
    url: str
    workdir: Path

    def through_the_node(self, files: list[Path], expected: set[str], name: str) -> ViewerStudy:
        """Send a study to the node and read back its results (see node_results)."""
        folder = self.workdir / name
        return through_the_node(self.pacs, files, expected, folder, self.node.log_text)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Orthanc with DICOMweb, the node, and OHIF plus a DICOMweb proxy on one origin."""
    reason = missing_tools()
    if reason is not None:
        pytest.skip(reason)
    if not have_dicomweb_plugin():
        pytest.skip(f"Orthanc's DICOMweb plugin is not installed at {DICOMWEB_PLUGIN}")
    workdir = tmp_path_factory.mktemp("viewer")
    port = get_free_port()
    with run_orthanc(
        workdir, modalities={NODE_MODALITY: ("AINODE", "127.0.0.1", port)}, dicomweb=True
    ) as pacs:
        config = write_config(workdir / "node.toml", node_document(workdir, pacs=pacs, port=port))
        with (
            run_node(config, port=port) as node,
            serve_ohif(OHIF_DIST, pacs.url, get_free_port()) as url,
        ):
            yield Site(pacs, node, url, workdir)


@pytest.fixture(scope="module")
def ct(site: Site) -> ViewerStudy:
    """A CT series and the bone model's SR and SEG, as the node sent them back."""
    files = ct_series(site.workdir / "ct", CT_SLICES)
    return site.through_the_node(files, {"SR", "SEG"}, "ct-results")


@pytest.fixture(scope="module")
def cr(site: Site) -> ViewerStudy:
    """A chest radiograph and the classifier's SR and heatmap, as the node sent them."""
    files = [chest_radiograph(site.workdir / "cr")]
    return site.through_the_node(files, {"SR", "OT"}, "cr-results")
