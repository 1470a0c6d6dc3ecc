"""DICOMweb peers and the [dicomweb] receiver section: validated with key paths, paths
resolved against the config file's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import (
    BasicAuth,
    BearerAuth,
    DicomwebPeerConfig,
    NoAuth,
    PeerConfig,
    parse_config,
)
from dicom_node.errors import ConfigError
from dicom_node.net.scu import resolve_peer
from tests.node.test_config import PEER, problems_of, valid

WEB = {"name": "cloud", "kind": "dicomweb", "url": "https://archive.example/dicom-web/"}


def parse(data: dict[str, Any]) -> Any:
    return parse_config(data, "node.toml", Path("/etc/node"))


def test_dicomweb_peer_beside_a_dimse_peer() -> None:
    auth = {"type": "bearer", "token_file": "secrets/token"}
    config = parse(valid(peers=[PEER, {**WEB, "auth": auth, "ca_file": "tls/ca.crt"}]))
    dimse, web = config.peers
    assert isinstance(dimse, PeerConfig) and dimse.kind == "dimse"
    assert isinstance(web, DicomwebPeerConfig)
    assert web.url == "https://archive.example/dicom-web"  # trailing slash dropped
    assert web.ca_file == Path("/etc/node/tls/ca.crt")
    assert isinstance(web.auth, BearerAuth)
    assert web.auth.token_file == Path("/etc/node/secrets/token")
    assert isinstance(parse(valid(peers=[PEER, WEB])).peers[1].auth, NoAuth)


def test_dicomweb_peer_problems_name_their_keys() -> None:
    peer = {**WEB, "url": "ftp://archive", "read_timeout_seconds": 0, "ae_title": "X"}
    found = dict(problems_of(valid(peers=[peer])))
    assert "not an http:// or https:// URL" in found["peers[0].url"]
    assert "'ftp://archive'" in found["peers[0].url"]
    assert "greater than 0" in found["peers[0].read_timeout_seconds"]
    assert found["peers[0].ae_title"] == "unknown key"


def test_unknown_peer_kind_is_named() -> None:
    [(key, message)] = problems_of(valid(peers=[{**WEB, "kind": "dicomwebb"}]))
    assert key == "peers[0]"
    assert "kind must be 'dimse' (the default) or 'dicomweb'" in message


def test_dimse_peer_errors_keep_their_key_paths() -> None:
    [(key, message)] = problems_of(valid(peers=[{"name": "pacs", "host": "h", "port": 1}]))
    assert key == "peers[0].ae_title"
    assert message.startswith("Field required")


@pytest.mark.parametrize(
    ("auth", "key", "expected"),
    [
        ({"type": "basic", "username": "u"}, "peers[0].auth", "exactly one of password_env"),
        (
            {"type": "basic", "username": "u", "password_env": "A", "password_file": "p"},
            "peers[0].auth",
            "exactly one of password_env, password_file (got ['password_env', 'password_file'])",
        ),
        (
            {"type": "basic", "username": "u", "password_env": "A-B"},
            "peers[0].auth.password_env",
            "'A-B'",
        ),
        ({"type": "bearer"}, "peers[0].auth", "exactly one of token_file, token_command"),
        ({"type": "bearer", "token_command": []}, "peers[0].auth.token_command", "at least 1"),
        (
            {"type": "client_certificate", "cert_file": "c"},
            "peers[0].auth.key_file",
            "Field required",
        ),
        ({"type": "kerberos"}, "peers[0].auth", "'none', 'basic', 'bearer', 'client_certificate'"),
    ],
)
def test_auth_problems(auth: dict[str, Any], key: str, expected: str) -> None:
    found = dict(problems_of(valid(peers=[{**WEB, "auth": auth}])))
    assert key in found, found
    assert expected in found[key]


def test_basic_auth_from_an_environment_variable() -> None:
    auth = {"type": "basic", "username": "node", "password_env": "ARCHIVE_PASSWORD"}
    peer = parse(valid(peers=[PEER, {**WEB, "auth": auth}])).peers[1]
    assert isinstance(peer.auth, BasicAuth) and peer.auth.password_file is None


def test_query_peer_and_destinations_may_be_dicomweb() -> None:
    route = {"name": "r", "models": ["m"], "destinations": ["cloud"]}
    config = parse(valid(peers=[WEB], routes=[route], completion={"query_peer": "cloud"}))
    assert isinstance(config.peer("cloud"), DicomwebPeerConfig)


def test_echo_and_send_refuse_a_dicomweb_peer() -> None:
    config = parse(valid(peers=[PEER, WEB]))
    assert resolve_peer("pacs", config).ae_title == "ORTHANC"
    with pytest.raises(ValueError, match="'cloud' is a DICOMweb peer"):
        resolve_peer("cloud", config)


def test_receiver_is_off_by_default_and_resolves_paths() -> None:
    assert not parse({}).dicomweb.enabled
    section = {
        "enabled": True,
        "tokens_file": "secrets/tokens",
        "tls": {"cert_file": "tls/node.crt", "key_file": "tls/node.key"},
    }
    settings = parse({"dicomweb": section}).dicomweb
    assert settings.tokens_file == Path("/etc/node/secrets/tokens")
    assert settings.tls is not None and settings.tls.key_file == Path("/etc/node/tls/node.key")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"enabled": True, "tokens_file": "t"}, "enabled without tls"),
        (
            {"enabled": True, "allow_plain_http": True},
            "enabled without tokens_file or tls.ca_file: nobody could write",
        ),
        (
            {"enabled": True, "tls": {"cert_file": "c", "key_file": "k"}},
            "enabled without tokens_file or tls.ca_file",
        ),
    ],
)
def test_receiver_must_be_secured(section: dict[str, Any], expected: str) -> None:
    [(key, message)] = problems_of({"dicomweb": section})
    assert key == "dicomweb"
    assert expected in message


def test_receiver_with_client_certificates_needs_no_tokens() -> None:
    tls = {"cert_file": "c", "key_file": "k", "ca_file": "ca"}
    assert parse({"dicomweb": {"enabled": True, "tls": tls}}).dicomweb.enabled


def test_receiver_problems_name_their_keys() -> None:
    found = dict(problems_of({"dicomweb": {"allowed_hosts": ["10.0.0.300"], "max_body_mb": 0}}))
    assert "'10.0.0.300'" in found["dicomweb.allowed_hosts"]
    assert "greater than 0" in found["dicomweb.max_body_mb"]


def test_config_error_lists_dicomweb_problems_with_the_rest() -> None:
    with pytest.raises(ConfigError, match=r"peers\[1\]\.url"):
        parse(valid(node={"port": 0}, peers=[PEER, {**WEB, "url": "archive"}]))
