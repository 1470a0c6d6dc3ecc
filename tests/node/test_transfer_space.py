"""The free-disk floor checked when a transfer starts: below it, nothing is written."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE, dimse_messages

from dicom_node.intake.spool import Spool
from dicom_node.net.transfer_space import TransferSpace
from tests.node.conftest import SENDER, RunningNode, large_ct


def _open(space: TransferSpace, spool: Spool) -> object:
    return space.open_transfer(delete=False, mode="wb", suffix=".dcm", dir=spool.incoming_dir)


def test_below_the_floor_a_transfer_keeps_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    full, room = TransferSpace(spool, 1 << 60), TransferSpace(spool, 0)
    for space, kept in ((full, 0), (room, 1000)):
        handle = _open(space, spool)
        handle.write(b"x" * 1000)  # type: ignore[attr-defined]
        handle.file.flush()  # type: ignore[attr-defined]
        handle.close()  # type: ignore[attr-defined]
        path = Path(handle.name)  # type: ignore[attr-defined]
        assert path.stat().st_size == kept
        assert space.was_discarded(path) is (kept == 0)
        assert not space.was_discarded(path)  # asked once, by the store handler


def test_installed_only_while_in_use(tmp_path: Path) -> None:
    space = TransferSpace(Spool(tmp_path), 0)
    original = dimse_messages.NamedTemporaryFile
    with space.installed():
        assert dimse_messages.NamedTemporaryFile == space.open_transfer
    assert dimse_messages.NamedTemporaryFile is original


def test_a_large_instance_sent_to_a_full_node_fills_no_disk(
    start_node: Callable[..., RunningNode],
) -> None:
    node = start_node(node={"min_free_disk_mb": 1 << 40})
    incoming = node.config.node.storage_dir / "incoming"
    largest = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal largest
        while not done.is_set():
            for path in incoming.rglob("*.dcm"):
                try:  # the node may remove it between the listing and the stat
                    largest = max(largest, path.stat().st_size)
                except FileNotFoundError:
                    continue

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        scu = AE(ae_title=SENDER.ae_title)
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = scu.associate("127.0.0.1", node.config.node.port, ae_title="AINODE")
        try:
            status = assoc.send_c_store(large_ct(20))
        finally:
            assoc.release()
            scu.shutdown()
    finally:
        done.set()
        watcher.join(timeout=5)
    assert status.Status == 0xA700
    assert largest < 100_000, f"{largest} bytes written to incoming/"
