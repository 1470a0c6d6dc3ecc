"""pynetdicom's private parts the node uses: fail loudly when an upgrade moves them.

Every one of them is reached through `dicom_node.net.pynetdicom_internals`; these tests
name each, so that a pynetdicom release that renames or drops one fails here, with the
name, rather than in a listener under load.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, _config, build_context, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationSocket, RequestHandler

import dicom_node
from dicom_node.net import pynetdicom_internals
from dicom_node.net.pynetdicom_internals import (
    TESTED_VERSIONS,
    copy_context,
    receive_into_files,
    unfinished_transfer_files,
    untested_version,
)
from dicom_node.net.scu import VERIFICATION


def test_the_installed_pynetdicom_is_a_version_whose_private_parts_were_checked() -> None:
    version = untested_version()
    assert version is None, (
        f"pynetdicom {version} is installed, but dicom_node.net.pynetdicom_internals was "
        f"checked against {TESTED_VERSIONS} only: check each private part its docstring "
        "lists, then add the version to TESTED_VERSIONS and widen the pin in pyproject.toml"
    )


def test_another_version_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    assert untested_version() == "3.1.0"


def test_the_private_names_are_there() -> None:
    for flag in ("STORE_RECV_CHUNKED_DATASET", "STORE_SEND_CHUNKED_DATASET"):
        assert isinstance(getattr(_config, flag), bool), flag
    assert callable(RequestHandler._create_association)
    assert callable(AssociationSocket._shutdown_socket)
    assert isinstance(AE()._servers, list)
    assert C_STORE_RQ()._data_set_file is None
    assert C_STORE()._dataset_file is None


def test_received_data_sets_are_opened_through_the_name_that_is_replaced() -> None:
    source = inspect.getsource(DIMSEMessage.decode_msg)
    assert "NamedTemporaryFile(" in source and "_config.STORE_RECV_CHUNKED_DATASET" in source
    opened = dimse_messages.NamedTemporaryFile

    def opener(**kwargs: object) -> None:
        return None

    with receive_into_files(opener):
        assert dimse_messages.NamedTemporaryFile is opener
        assert _config.STORE_RECV_CHUNKED_DATASET
    assert dimse_messages.NamedTemporaryFile is opened


def test_context_copy_and_unfinished_transfers_of_an_idle_association() -> None:
    context = build_context(VERIFICATION)
    copied = copy_context(context)
    assert copied.abstract_syntax == context.abstract_syntax
    assert copied.transfer_syntax == context.transfer_syntax
    assert copied._transfer_syntax is not context._transfer_syntax
    assert unfinished_transfer_files(Association(AE(), "requestor")) == []


def test_no_other_module_of_the_node_touches_them() -> None:
    """The confinement itself, read from the source of every other module of the node."""
    package = Path(dicom_node.__file__).parent
    internals = Path(pynetdicom_internals.__file__)
    for path in sorted(package.rglob("*.py")):
        if path == internals:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
                names = {alias.name for alias in node.names} | {node.module or ""}
                touched = {n for n in names if n.startswith("_") or "._" in n} | (
                    names & {"dimse_messages", "pynetdicom.dimse_messages"}
                )
                assert not touched, f"{path}: imports {touched} from pynetdicom"
            if isinstance(node, ast.Attribute):
                assert node.attr not in PRIVATE_ATTRIBUTES, f"{path}:{node.lineno}: {node.attr}"
                assert not (
                    node.attr == "tempdir"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "tempfile"
                ), f"{path}:{node.lineno}: sets the process-wide tempfile.tempdir"


PRIVATE_ATTRIBUTES = {
    "STORE_RECV_CHUNKED_DATASET",
    "STORE_SEND_CHUNKED_DATASET",
    "_servers",
    "_create_association",
    "_shutdown_socket",
    "_transfer_syntax",
    "_data_set_file",
    "_dataset_file",
}
