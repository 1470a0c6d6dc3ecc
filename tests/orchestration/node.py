"""Running ``dicom-node serve`` as a real process against real peers, for the tests.

The node runs as a subprocess (``python -m dicom_node serve``) with its own TOML
config, so that tests can stop it with SIGTERM or kill it with SIGKILL mid-work and
start it again on the same database and spool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT, get_free_port
from tests.orchestration.studies import MODELS
from tests.peers import Orthanc, stop_process, wait_for_port


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


def dump_toml(document: dict[str, Any]) -> str:
    """TOML for a config dict: sections, arrays of tables, inline tables below them."""
    lines: list[str] = []
    for name, section in document.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
            lines.append("")
    return "\n".join(lines)


def node_document(
    workdir: Path,
    *,
    pacs: Orthanc | None,
    database_url: str | None = None,
    port: int | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A node config: demo models, CT and CR routes to the PACS, fast timers for tests.

    ``sections`` replace or extend the defaults section by section (dicts are merged).
    """
    document: dict[str, Any] = {
        "node": {
            "ae_title": "AINODE",
            "host": "127.0.0.1",
            "port": port or get_free_port(),
            "storage_dir": workdir / "storage",
            "database_url": database_url or f"sqlite:///{workdir / 'node.db'}",
            "min_free_disk_mb": 0,
            # A probe connection that never associates must not hold up a stop.
            "network_timeout_seconds": 5,
            "log_level": "INFO",
        },
        "security": {"allowed_calling_aets": ["ORTHANC", "TESTSCU"]},
        "peers": [
            {
                "name": "pacs",
                "ae_title": pacs.aet if pacs else "ORTHANC",
                "host": "127.0.0.1",
                "port": pacs.dicom_port if pacs else 1,
            }
        ],
        "completion": {"stable_seconds": 1.0, "scan_interval_seconds": 0.25},
        "models": [
            {"name": "demo-ct-bone", "path": MODELS / "demo-ct-bone", "backend": "onnxruntime"},
            {
                "name": "demo-cr-classifier",
                "path": MODELS / "demo-cr-classifier",
                "backend": "onnxruntime",
            },
        ],
        "routes": [
            {
                "name": "ct",
                "models": ["demo-ct-bone"],
                "match": {"Modality": "CT"},
                "destinations": ["pacs"],
            },
            {
                "name": "radiographs",
                "models": ["demo-cr-classifier"],
                "match": {"Modality": ["CR", "DX"]},
                "reply_to_sender": True,
            },
        ],
        "worker": {"count": 1, "poll_seconds": 0.2, "retry_backoff_seconds": 1},
        "delivery": {
            "scan_interval_seconds": 0.25,
            "backoff_initial_seconds": 0.5,
            "backoff_max_seconds": 2,
            "max_attempts": 30,
            "timeout_seconds": 10,
        },
        "retention": {"keep_hours": 72},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(name), dict):
            document[name] = {**document[name], **value}
        else:
            document[name] = value
    return document


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(document))
    return path


class NodeProcess:
    """A running ``dicom-node serve``; ``log`` holds its stderr."""

    def __init__(self, config: Path, role: str, log: Path, port: int | None) -> None:
        self.config = config
        self.role = role
        self.log = log
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_node",
                    "serve",
                    "-c",
                    str(self.config),
                    "--role",
                    self.role,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
            )
        if self.port is not None:
            wait_for_port(self.port, self.process, 60.0)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        stop_process(self.process, timeout=60)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_node(config: Path, role: str = "all", port: int | None = None) -> Iterator[NodeProcess]:
    """Start the node and always stop it (SIGTERM, then SIGKILL)."""
    node = NodeProcess(config, role, config.with_suffix(f".{role}.log"), port)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.2,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``message``
    (a callable is called only then, e.g. to read a log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    text = message() if callable(message) else message
    raise AssertionError(f"timed out after {timeout} s: {text}")
