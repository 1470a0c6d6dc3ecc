"""The floor of the node's receiving: its listener with a C-STORE handler that does nothing.

The same AE, presentation contexts, sockets and streaming to a temp file as
``dicom-node serve``, but each instance is answered Success as soon as pynetdicom has
received it: no header parsing, no fsync, no spool, no database. The ingest benchmark
runs it beside the node, so that what the node adds on top of pynetdicom itself shows
in the same table. Not a receiver anyone should use: it keeps nothing.

Run:  python -m benchmarks.receive_floor PORT INCOMING_DIR
"""

from __future__ import annotations

import functools
import signal
import sys
import tempfile
import threading
from pathlib import Path

from pynetdicom import evt
from pynetdicom.events import Event

from dicom_node.config import parse_config
from dicom_node.net.pynetdicom_internals import receive_into_files
from dicom_node.net.scp import build_listener_ae, make_listener_server

FLOOR_AET = "FLOOR"


def answer_success(_event: Event) -> int:
    return 0x0000


def main() -> int:
    port, incoming = int(sys.argv[1]), Path(sys.argv[2])
    incoming.mkdir(parents=True, exist_ok=True)
    config = parse_config(
        {"node": {"ae_title": FLOOR_AET, "host": "127.0.0.1", "port": port}}, "floor", incoming
    )
    ae = build_listener_ae(config)
    server = make_listener_server(ae, config, [(evt.EVT_C_STORE, answer_success)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with receive_into_files(functools.partial(tempfile.NamedTemporaryFile, dir=incoming)):
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stop.wait()  # the benchmark stops it between runs; nothing in flight matters
    return 0


if __name__ == "__main__":
    sys.exit(main())
