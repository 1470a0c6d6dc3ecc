"""The listener's commands: echo, send, status, and serve refusing a bad config."""

from __future__ import annotations

import io
import json
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.cli import build_parser, main
from tests.conftest import REPO_ROOT, get_free_port
from tests.node.conftest import SENDER_AET, RunningNode, node_settings, write_series, write_toml

StartNode = Callable[..., RunningNode]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``main`` configures logging onto this test's stderr; undo it afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_echo_by_address(start_node: StartNode, capsys: pytest.CaptureFixture[str]) -> None:
    node = start_node()
    spec = f"AINODE@127.0.0.1:{node.config.node.port}"
    assert main(["echo", spec, "--aet", SENDER_AET]) == 0
    assert "status 0x0000" in capsys.readouterr().out


def test_echo_by_peer_name_from_config(
    start_node: StartNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node()
    peer = {
        "name": "self",
        "ae_title": "AINODE",
        "host": "127.0.0.1",
        "port": node.config.node.port,
    }
    config = node_settings(tmp_path / "client", node={"ae_title": SENDER_AET}, peers=[peer])
    path = write_toml(config, tmp_path / "client.toml")
    assert main(["echo", "self", "-c", str(path)]) == 0
    assert main(["echo", "nobody", "-c", str(path)]) == 2
    assert "not a peer name (self) nor AET@host:port: 'nobody'" in capsys.readouterr().err


def test_echo_nobody_listening(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", f"X@127.0.0.1:{get_free_port()}", "--timeout", "2"]) == 1
    assert "C-ECHO failed: no association" in capsys.readouterr().err


def test_send_folder_then_status(
    start_node: StartNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node()
    folder = tmp_path / "study"
    write_series(folder / "a", 3)
    (folder / "notes.txt").write_text("not DICOM")
    spec = f"AINODE@127.0.0.1:{node.config.node.port}"
    code = main(["send", str(folder), "--to", spec, "--aet", SENDER_AET, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1  # one file could not be sent
    assert "sent 4 file(s)" in out
    assert "0x0000 x3" in out and "not sent x1" in out
    assert "notes.txt: not sent not a DICOM file" in err

    config = write_toml(node_settings(tmp_path), tmp_path / "status.toml")  # same spool and db
    assert main(["status", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["studies"]["receiving"] == 1
    assert report["spool"]["instances"] == 3
    assert report["spool"]["disk_used_bytes"] > 0
    assert main(["status", "-c", str(config)]) == 0
    assert "instances" in capsys.readouterr().out


def test_send_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["send", str(tmp_path / "gone"), "--to", "X@127.0.0.1:1"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_log_lines_follow_stderr_after_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command run in-process, then its stderr replaced and closed (pytest's capsys at
    teardown) while the node's threads still log: the lines go to the new stderr, not
    to "--- Logging error --- ValueError: I/O operation on closed file"."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    assert main(["send", str(tmp_path / "gone"), "--to", "X@127.0.0.1:1"]) == 2
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("dicom_node.service").info("node stopped")
    assert "INFO dicom_node.service node stopped" in second.getvalue()
    assert "Logging error" not in second.getvalue()


def test_serve_refuses_a_bad_config_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = get_free_port()
    config = node_settings(tmp_path, node={"port": port, "colour": "red"})
    path = write_toml(config, tmp_path / "bad.toml")
    assert main(["serve", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "node.colour: unknown key" in err


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["retry", "--failed"],
        ["models"],
        ["results"],
        ["drift"],
        ["audit", "--study", "1.2.3"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_answers_a_bad_config_with_its_key_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = node_settings(tmp_path, node={"colour": "red"})
    path = write_toml(config, tmp_path / "bad.toml")
    assert main([command[0], "-c", str(path), *command[1:]]) == 2
    assert "node.colour: unknown key" in capsys.readouterr().err


def test_systemd_unit_runs_serve_and_stops_with_sigterm() -> None:
    unit = (REPO_ROOT / "config" / "dicom-node.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Restart"] == "on-failure"
    assert settings["KillSignal"] == "SIGTERM"
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(settings[key])
        assert argv[0].endswith("/dicom-node")
        args = build_parser().parse_args(argv[1:])  # the unit's command line is ours
        assert args.config == "/etc/dicom-node/node.toml"
    assert build_parser().parse_args(shlex.split(settings["ExecStart"])[1:]).role == "all"


def test_systemd_unit_runs_as_its_own_user_with_a_private_umask() -> None:
    unit = (REPO_ROOT / "config" / "dicom-node.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["UMask"] == "0027"
    assert settings["User"] == settings["Group"] == "dicom-node"
    assert settings["StateDirectory"] == "dicom-node"
    assert settings["StateDirectoryMode"] == "0750"
