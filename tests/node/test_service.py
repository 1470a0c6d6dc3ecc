"""A node process stops whole: nothing it started keeps running after :meth:`Service.stop`."""

from __future__ import annotations

import threading
from pathlib import Path

from dicom_node.config import parse_config
from dicom_node.service import Service
from tests.conftest import get_free_port
from tests.node.conftest import node_settings, wait_for


def test_a_stopped_service_leaves_no_thread_behind(tmp_path: Path) -> None:
    """The scheduler, its job threads, the listener, the workers and the metrics server
    all end with the service: a thread left running would go on logging (and holding the
    database) after its process believes it stopped."""
    before = set(threading.enumerate())
    document = node_settings(tmp_path, metrics={"enabled": True, "port": get_free_port()})
    service = Service(parse_config(document, "test", tmp_path), role="all")
    ran: list[str] = []
    service.scheduler.add_listener(lambda event: ran.append(event.job_id))
    service.start()
    try:
        assert wait_for(lambda: {"completion", "routing", "delivery"} <= set(ran), timeout=20)
    finally:
        service.stop()
    assert not service.scheduler.running
    left = [thread.name for thread in threading.enumerate() if thread not in before]
    assert left == []
