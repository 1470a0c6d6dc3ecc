"""The config file: every kind of mistake is reported with its key path and value."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from dicom_node.config import NodeConfig, load_config, parse_config
from dicom_node.errors import ConfigError
from tests.conftest import REPO_ROOT, get_free_port

EXAMPLE = REPO_ROOT / "config" / "node.example.toml"

PEER = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
MODEL = {"name": "m", "path": "models/m"}
ROUTE = {"name": "r", "models": ["m"], "destinations": ["pacs"], "match": {"Modality": "CT"}}


def problems_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError, match="problem") as info:
        parse_config(data, "node.toml", Path("/etc/node"))
    return info.value.problems


def valid(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"peers": [PEER], "models": [MODEL], "routes": [ROUTE]}
    data.update(overrides)
    return data


def test_example_config_is_valid_and_resolves_paths() -> None:
    config = load_config(EXAMPLE)
    assert config.node.ae_title == "AINODE"
    assert config.node.storage_dir == (REPO_ROOT / "var" / "spool").resolve()
    assert config.node.database_url == f"sqlite:///{(REPO_ROOT / 'var' / 'node.db').resolve()}"
    assert config.model("demo-ct-bone").path == (REPO_ROOT / "models" / "demo-ct-bone").resolve()


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The config sections an annotation holds, through lists, unions and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    inner = getattr(annotation, "__origin__", None)  # Annotated[X, ...] -> X
    for argument in (*getattr(annotation, "__args__", ()), *([inner] if inner else [])):
        yield from _models(argument)


def _keys(model: type[BaseModel]) -> set[str]:
    keys = set(model.model_fields)
    for field in model.model_fields.values():
        for section in _models(field.annotation):
            keys |= _keys(section)
    return keys


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    written = set(re.findall(r"^[#\s\[]*([a-z_]+)\]?\s*=", text, flags=re.MULTILINE))
    sections = set(re.findall(r"^#?\s*\[+([a-z_.]+)\]+", text, flags=re.MULTILINE))
    documented = written | {s.split(".")[-1] for s in sections}
    missing = _keys(NodeConfig) - documented - {"regex", "min", "max"}
    assert not missing, f"keys not in config/node.example.toml: {sorted(missing)}"


def test_minimal_config_takes_defaults() -> None:
    config = parse_config({}, "node.toml", Path("/etc/node"))
    assert config.node.port == 11112
    assert config.node.database_url == "sqlite:////etc/node/var/node.db"
    assert config.completion.stable_seconds == 30


def test_unknown_key_is_named() -> None:
    assert ("node.prot", "unknown key") in problems_of(valid(node={"prot": 1}))


def test_wrong_type_names_key_and_value() -> None:
    [(key, message)] = problems_of(valid(node={"port": "eleven"}))
    assert key == "node.port"
    assert "'eleven'" in message


def test_bad_ae_title_names_value() -> None:
    [(key, message)] = problems_of(valid(node={"ae_title": "A\\B"}))
    assert key == "node.ae_title"
    assert "A\\\\B" in message or "A\\B" in message


def test_duplicate_peer_names() -> None:
    assert ("peers[1].name", "duplicate name 'pacs'") in problems_of(valid(peers=[PEER, PEER]))


def test_route_naming_missing_model_and_peer() -> None:
    route = {**ROUTE, "models": ["nope"], "destinations": ["pacs", "gone"]}
    found = problems_of(valid(routes=[route]))
    assert ("routes[0].models[0]", "no model named 'nope'") in found
    assert ("routes[0].destinations[1]", "no peer named 'gone'") in found


def test_route_without_destination() -> None:
    route = {"name": "r", "models": ["m"]}
    [(key, message)] = problems_of(valid(routes=[route]))
    assert key == "routes[0]"
    assert "destinations or reply_to_sender" in message


def test_route_match_conditions_are_checked() -> None:
    route = {
        **ROUTE,
        "match": {"SliceThickness": {"min": 5, "max": 1}, "SeriesDescription": {"regex": "("}},
    }
    found = dict(problems_of(valid(routes=[route])))
    assert "min (5.0) is greater than max (1.0)" in found["routes[0].match.SliceThickness"]
    assert "not a valid regular expression '('" in found["routes[0].match.SeriesDescription"]


def test_route_match_keyword_must_exist() -> None:
    route = {**ROUTE, "match": {"Modalty": "CT"}}
    [(key, message)] = problems_of(valid(routes=[route]))
    assert key == "routes[0].match"
    assert "'Modalty'" in message


def test_route_match_accepts_every_form() -> None:
    match = {
        "Modality": ["CT", "MR"],
        "SliceThickness": {"min": 0.5},
        "SeriesDescription": {"regex": "(?i)chest"},
        "CallingAETitle": "ORTHANC",
        "SeriesNumber": 2,
    }
    config = parse_config(valid(routes=[{**ROUTE, "match": match}]), "n", Path("/"))
    assert set(config.routes[0].match) == set(match)


def test_query_peer_must_exist() -> None:
    found = problems_of(valid(completion={"query_peer": "archive"}))
    assert ("completion.query_peer", "no peer named 'archive'") in found


def test_all_problems_reported_at_once() -> None:
    found = problems_of(valid(node={"port": 0, "colour": "red"}, peers=[PEER, PEER]))
    assert {key for key, _ in found} == {"node.port", "node.colour"}


def test_bad_network_in_allowed_hosts() -> None:
    [(key, message)] = problems_of(valid(security={"allowed_hosts": ["10.0.0.300"]}))
    assert key == "security.allowed_hosts"
    assert "'10.0.0.300'" in message


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``dicom-node check-config -c path`` as an administrator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_config_cli_prints_each_problem(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nport = "x"\nfoo = 1\n[[peers]]\nname = "a"\n')
    result = check_config(path)
    assert result.returncode == 1
    assert "node.port" in result.stderr
    assert "node.foo: unknown key" in result.stderr
    assert "peers[0].ae_title: Field required" in result.stderr


def test_check_config_refuses_what_serve_would(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[security]\nallowed_calling_aets = ["ORTHANC", "A_TITLE_OF_20_CHARS"]\n')
    result = check_config(path)
    assert result.returncode == 1
    assert "security.allowed_calling_aets[1]: String should have at most 16" in result.stderr
    [(key, message)] = problems_of(valid(security={"allowed_calling_aets": ["BAD\\AE"]}))
    assert key == "security.allowed_calling_aets[0]"
    assert "BAD" in message


def test_check_config_refuses_tls_files_serve_cannot_load(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    (tmp_path / "node.crt").write_text("not a certificate\n")
    path.write_text('[security.tls]\ncert_file = "node.crt"\nkey_file = "missing.key"\n')
    result = check_config(path)
    assert result.returncode == 1
    assert "security.tls: cannot load the certificate, key or CA file" in result.stderr


def test_private_sop_classes_must_be_uids() -> None:
    [(key, message)] = problems_of(valid(node={"private_sop_classes": ["1.2.03"]}))
    assert key == "node.private_sop_classes"
    assert "'1.2.03'" in message


def test_check_config_cli_accepts_example() -> None:
    result = check_config(EXAMPLE)
    assert result.returncode == 0, result.stderr


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    assert tomllib  # the stdlib parser is what the node uses


def test_serve_refuses_a_broken_model_package(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.toml").write_text('[model]\nname = "broken"\n')
    path.write_text(
        f'[node]\nport = 1\ndatabase_url = "sqlite:///{tmp_path}/node.db"\n'
        '[[models]]\nname = "broken"\npath = "broken"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "models[0].path" in result.stderr
    assert "model.toml" in result.stderr


def test_free_ports_are_never_handed_out_twice() -> None:
    ports = [get_free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
