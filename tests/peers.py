"""Real DICOM peers for tests and benchmarks: Orthanc (the PACS) and DCMTK's storescp.

Each runs as a subprocess on free loopback ports with its own temporary config and
storage, and is always terminated when its context manager exits, even when the test
fails. Shared by the listener, orchestration and viewer tests and by ``benchmarks/``.

Example
-------
>>> with run_orthanc(tmp_path, modalities={"node": ("AINODE", "127.0.0.1", 11112)}) as pacs:
...     ids = pacs.upload(files)
...     pacs.store("node", ids)
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import get_free_port

ORTHANC = Path("/usr/sbin/Orthanc")
STORESCP = Path("/usr/bin/storescp")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
START_TIMEOUT_S = 30.0


class PeerError(RuntimeError):
    """A peer did not start, or answered its REST API with an error."""


def have_orthanc() -> bool:
    return ORTHANC.exists()


def have_dicomweb_plugin() -> bool:
    return DICOMWEB_PLUGIN.exists()


def have_dcmtk() -> bool:
    return STORESCP.exists()


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``.

    Raises
    ------
    PeerError
        When ``process`` exits first or ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"{process.args!r} exited with {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise PeerError(f"nothing listens on port {port} after {timeout} s: {process.args!r}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM and HTTP ports, and a small REST client."""

    aet: str
    dicom_port: int
    http_port: int
    root: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (with ``run_orthanc(..., dicomweb=True)``)."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

    def rest(self, method: str, path: str, body: Any = None, timeout: float = 120.0) -> Any:
        """Call the REST API; JSON in and out (bytes are sent as they are).

        Raises
        ------
        PeerError
            On an HTTP error status, with Orthanc's answer in the message.
        """
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PeerError(f"Orthanc {method} {path}: HTTP {exc.code}: {detail}") from None
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """POST each file to ``/instances``; the Orthanc ids of the stored instances."""
        return [self.rest("POST", "/instances", Path(p).read_bytes())["ID"] for p in paths]

    def store(self, modality: str, resources: Sequence[str], timeout: float = 300.0) -> Any:
        """C-STORE Orthanc resources (instance, series or study ids) to a modality, waiting."""
        body = {"Resources": list(resources), "Synchronous": True}
        return self.rest("POST", f"/modalities/{modality}/store", body, timeout=timeout)

    def study_ids(self) -> list[str]:
        return list(self.rest("GET", "/studies"))

    def instance_count(self) -> int:
        return int(self.rest("GET", "/statistics")["CountInstances"])


@contextmanager
def run_orthanc(
    workdir: Path,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    aet: str = "ORTHANC",
    plugins: Sequence[Path] = (),
    extra: dict[str, Any] | None = None,
    dicomweb: bool = False,
    dicomweb_servers: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc on free loopback ports with storage under ``workdir``.

    ``modalities`` maps a name to ``(AE title, host, port)``: the peers Orthanc talks to
    (it answers C-FIND and storage commitment only for those). ``dicomweb`` loads the
    DICOMweb plugin, serving under :attr:`Orthanc.dicomweb_url`; ``dicomweb_servers``
    are its ``DicomWeb.Servers`` (the DICOMweb peers it sends to). ``extra`` is merged
    into its JSON config last. Waits until the REST API answers; always terminates it.

    Raises
    ------
    PeerError
        When Orthanc (or, with ``dicomweb``, its plugin) is not installed or does not
        come up.
    """
    if not have_orthanc():
        raise PeerError(f"Orthanc is not installed at {ORTHANC}")
    if dicomweb and not have_dicomweb_plugin():
        raise PeerError(f"Orthanc's DICOMweb plugin is not installed at {DICOMWEB_PLUGIN}")
    root = workdir / "orthanc"
    root.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = get_free_port(), get_free_port()
    config: dict[str, Any] = {
        "Name": "test-pacs",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {
            name: [ae, host, port] for name, (ae, host, port) in (modalities or {}).items()
        },
        "DicomScuTimeout": 30,
        "StorageCompression": False,
        "SaveJobs": False,
        "OverwriteInstances": True,
        "Plugins": [str(p) for p in (*plugins, *([DICOMWEB_PLUGIN] if dicomweb else []))],
    }
    if dicomweb:
        config["DicomWeb"] = {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "Servers": dicomweb_servers or {},
        }
    config.update(extra or {})
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [str(ORTHANC), str(config_path)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        orthanc = Orthanc(aet, dicom_port, http_port, root, process)
        _wait_for_rest(orthanc)
        yield orthanc
    finally:
        stop_process(process)
        log.close()


def _wait_for_rest(orthanc: Orthanc) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            log = (orthanc.root / "orthanc.log").read_text(errors="replace")[-2000:]
            raise PeerError(f"Orthanc exited with {orthanc.process.returncode}:\n{log}")
        try:
            orthanc.rest("GET", "/system", timeout=1.0)
            return
        except (PeerError, OSError):
            time.sleep(0.1)
    raise PeerError(f"Orthanc REST API did not answer on {orthanc.url} in {START_TIMEOUT_S} s")


@dataclass
class StoreSCP:
    """A running DCMTK storescp writing what it receives under ``output_dir``."""

    aet: str
    port: int
    output_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def received(self) -> list[Path]:
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())


@contextmanager
def run_storescp(
    output_dir: Path, aet: str = "STORESCP", extra_args: Sequence[str] = ()
) -> Iterator[StoreSCP]:
    """Start DCMTK ``storescp`` on a free loopback port, accepting all transfer syntaxes.

    Raises
    ------
    PeerError
        When DCMTK is not installed or storescp does not come up.
    """
    if not have_dcmtk():
        raise PeerError(f"DCMTK is not installed at {STORESCP}")
    output_dir.mkdir(parents=True, exist_ok=True)
    port = get_free_port()
    args = [str(STORESCP), "--aetitle", aet, "--output-directory", str(output_dir), "+xa"]
    process = subprocess.Popen(
        [*args, *extra_args, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process, START_TIMEOUT_S)
        yield StoreSCP(aet, port, output_dir, process)
    finally:
        stop_process(process)
