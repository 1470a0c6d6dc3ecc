"""Listener fixtures: a node config in a temp folder, a node running in-process or as
a ``dicom-node serve`` subprocess, and test series written from pydicom's CT_small."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import NodeConfig, PeerConfig, load_config, parse_config
from dicom_node.db.sessions import create_db_engine, session_factory
from dicom_node.net.scu import LocalAE
from dicom_node.service import Service
from tests.conftest import REPO_ROOT, get_free_port
from tests.peers import stop_process, wait_for_port

NODE_AET = "AINODE"
SENDER_AET = "SENDER"


def node_settings(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config document for a node under ``tmp_path``; ``sections`` override keys."""
    data: dict[str, Any] = {
        "node": {
            "ae_title": NODE_AET,
            "host": "127.0.0.1",
            "port": get_free_port(),
            "storage_dir": str(tmp_path / "spool"),
            "database_url": f"sqlite:///{tmp_path / 'node.db'}",
            "min_free_disk_mb": 1,
            "network_timeout_seconds": 10,
        },
        "security": {"allowed_calling_aets": [SENDER_AET, "STORESCU", "ECHOSCU", "ORTHANC"]},
        "completion": {"stable_seconds": 3600, "scan_interval_seconds": 0.2},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **values}
        else:
            data[name] = values
    return data


def write_toml(data: dict[str, Any], path: Path) -> Path:
    """Write a config document as TOML (the few shapes these tests use)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for section, content in data.items():
        if isinstance(content, list):
            for item in content:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in content.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class RunningNode:
    """A node serving in this process."""

    service: Service
    config: NodeConfig

    @property
    def peer(self) -> PeerConfig:
        node = self.config.node
        return PeerConfig(name="node", ae_title=node.ae_title, host="127.0.0.1", port=node.port)

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.service.sessions


SENDER = LocalAE(ae_title=SENDER_AET, timeout=10)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """``start_node(**sections)`` runs a listener (and completion scan) in-process."""
    started: list[Service] = []

    def start(**sections: dict[str, Any]) -> RunningNode:
        config = parse_config(node_settings(tmp_path, **sections), "test", tmp_path)
        service = Service(config, role="listener")
        service.start()
        started.append(service)
        return RunningNode(service, config)

    yield start
    for service in started:
        service.stop()


@dataclass
class NodeProcess:
    """A ``dicom-node serve`` subprocess and its config."""

    process: subprocess.Popen[bytes]
    config_path: Path
    config: NodeConfig
    log_path: Path

    @property
    def peer(self) -> PeerConfig:
        node = self.config.node
        return PeerConfig(name="node", ae_title=node.ae_title, host="127.0.0.1", port=node.port)

    def sessions(self) -> sessionmaker[Session]:
        return session_factory(create_db_engine(self.config.node.database_url))

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def incoming_name(self) -> str:
        """The folder of this process's transfers in progress."""
        return f"{socket.gethostname()}-{self.process.pid}"


@pytest.fixture
def spawn_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``spawn_node(**sections)`` runs ``dicom-node serve`` as a subprocess; always stopped.

    Calling it again with ``config_path=`` restarts a node on the same config.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(config_path: Path | None = None, **sections: dict[str, Any]) -> NodeProcess:
        if config_path is None:
            config_path = write_toml(node_settings(tmp_path, **sections), tmp_path / "node.toml")
        config = load_config(config_path)
        log_path = tmp_path / f"node{len(processes)}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "-c", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("wb"),
            env=env,
        )
        processes.append(process)
        wait_for_port(config.node.port, process, 30.0)
        return NodeProcess(process, config_path, config, log_path)

    yield spawn
    for process in processes:
        stop_process(process)


def write_series(folder: Path, count: int, template: str = "CT_small.dcm") -> list[Path]:
    """``count`` instances of one new study and series, copies of a pydicom test file."""
    folder.mkdir(parents=True, exist_ok=True)
    source = dcmread(get_testdata_file(template))
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        source.StudyInstanceUID, source.SeriesInstanceUID = study, series
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.InstanceNumber = index + 1
        path = folder / f"{index:04d}.dcm"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def large_ct(megabytes: int) -> Dataset:
    """A new CT instance of about ``megabytes`` MB (blank 512 x 512 frames, explicit VR)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    frames = megabytes * 2  # 0.5 MB each
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.PixelData = np.zeros((frames, 512, 512), dtype=np.int16).tobytes()
    return ds


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def scalar(sessions: sessionmaker[Session], query: Any) -> Any:
    with sessions() as session:
        return session.scalar(query)


def rows(sessions: sessionmaker[Session], query: Any) -> list[Any]:
    with sessions() as session:
        return list(session.scalars(query))
