"""``[[notifications]]`` entries: webhooks and FHIR servers, validated with key paths,
filters checked against the routes and models, paths resolved against the config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_node.config import (
    BearerAuth,
    FhirNotification,
    WebhookNotification,
    load_config,
    parse_config,
)
from tests.node.test_config import EXAMPLE, check_config, problems_of, valid

HOOK = {"kind": "webhook", "name": "ris", "url": "https://ris.example/hooks/ai/"}
FHIR = {"kind": "fhir", "name": "emr", "url": "https://fhir.example/r4"}


def parse(data: dict[str, Any]) -> Any:
    return parse_config(data, "node.toml", Path("/etc/node"))


def test_webhook_and_fhir_entries_with_their_defaults_and_resolved_paths() -> None:
    hook = {**HOOK, "secret_file": "secrets/hook", "ca_file": "tls/ca.crt", "routes": ["r"]}
    auth = {"type": "bearer", "token_file": "secrets/fhir-token"}
    config = parse(valid(notifications=[hook, {**FHIR, "auth": auth, "models": ["m"]}]))
    webhook, fhir = config.notifications
    assert isinstance(webhook, WebhookNotification) and isinstance(fhir, FhirNotification)
    assert webhook.url == "https://ris.example/hooks/ai"
    assert webhook.secret_file == Path("/etc/node/secrets/hook")
    assert webhook.ca_file == Path("/etc/node/tls/ca.crt")
    assert webhook.signature_header == "X-Signature-256" and not webhook.include_patient_ids
    assert fhir.post == "transaction" and fhir.read_timeout_seconds == 30
    assert isinstance(fhir.auth, BearerAuth)
    assert fhir.auth.token_file == Path("/etc/node/secrets/fhir-token")
    assert webhook.applies_to(["r"], "m") and not webhook.applies_to(["other"], "m")
    assert fhir.applies_to(["any"], "m") and not fhir.applies_to(["any"], "other")
    assert parse(valid()).notifications == []


def test_notification_problems_name_their_keys() -> None:
    entries = [
        {**HOOK, "url": "http://ris.example/hook", "secret_env": "A", "secret_file": "f"},
        {**FHIR, "post": "batch", "routes": ["nope"], "models": ["m", "gone"], "extra": 1},
        {**HOOK, "signature_header": "X Sig", "read_timeout_seconds": 0},
        {**HOOK, "name": "other-name", "kind": "email"},
    ]
    found = dict(problems_of(valid(notifications=entries)))
    assert "plain http: use https:// or set allow_plain_http = true" in found["notifications[0]"]
    assert found["notifications[1].post"].startswith("Input should be 'transaction' or")
    assert found["notifications[1].extra"] == "unknown key"
    assert "greater than 0" in found["notifications[2].read_timeout_seconds"]
    assert "'X Sig'" in found["notifications[2].signature_header"]
    assert "'email'" in found["notifications[3]"]
    assert len(found) == 6, found
    [(key, message)] = problems_of(
        valid(notifications=[{**HOOK, "secret_env": "A", "secret_file": "f"}])
    )
    assert key == "notifications[0]"
    assert message.startswith("give at most one of secret_env, secret_file (got {")


def test_filters_and_names_are_checked_against_the_config() -> None:
    entries = [{**FHIR, "routes": ["nope"], "models": ["m", "gone"]}, {**HOOK, "name": "emr"}]
    assert problems_of(valid(notifications=entries)) == [
        ("notifications[0].routes[0]", "no route named 'nope'"),
        ("notifications[0].models[1]", "no model named 'gone'"),
        ("notifications[1].name", "duplicate name 'emr'"),
    ]


def test_example_config_has_a_webhook() -> None:
    (hook,) = load_config(EXAMPLE).notifications
    assert isinstance(hook, WebhookNotification) and hook.secret_env


def test_check_config_refuses_secret_and_ca_files_every_send_would_fail_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "two-lines").write_text("a\nb\n")
    path = tmp_path / "node.toml"
    path.write_text(
        "[[notifications]]\n"
        'name = "ris"\nkind = "webhook"\nurl = "https://ris.example/hook"\n'
        'secret_file = "two-lines"\nca_file = "tls/missing-ca.crt"\n'
    )
    result = check_config(path)
    assert result.returncode == 1
    secret, ca = str(tmp_path / "two-lines"), str(tmp_path / "tls/missing-ca.crt")
    assert f"notifications[0].secret_file: secret_file {secret!r} does not hold one line" in (
        result.stderr
    )
    assert f"notifications[0].ca_file: no such file {ca!r}" in result.stderr
