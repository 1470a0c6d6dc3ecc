"""Which compute device a model runs on, and the gate that shares a GPU between models.

CUDA is detected through PyTorch when it is installed (the TensorRT and PyTorch
backends need it for device buffers anyway); without PyTorch the node is a CPU node.
The gate is a per-GPU semaphore: every backend on a GPU holds it while it runs a
series, so that two studies never run the card out of memory together.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

DEFAULT_GPU_SLOTS = 1


def torch_available() -> bool:
    """Whether PyTorch can be imported, without importing it."""
    return importlib.util.find_spec("torch") is not None


def cuda_device_count() -> int:
    """Number of CUDA devices PyTorch sees; 0 without PyTorch or a driver."""
    if not torch_available():
        return 0
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_device(device: str) -> str:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into ``cpu`` or ``cuda:N``.

    Parameters
    ----------
    device : str
        What the caller asked for.

    Returns
    -------
    str
        ``"cpu"`` or ``"cuda:N"``.

    Raises
    ------
    ValueError
        When the name is not one of these forms, or a CUDA device is asked for that
        this machine does not have.
    """
    name = device.strip().lower()
    if name == "cpu":
        return "cpu"
    count = cuda_device_count()
    if name == "auto":
        return "cuda:0" if count else "cpu"
    if name == "cuda":
        name = "cuda:0"
    prefix, _, index = name.partition(":")
    if prefix != "cuda" or not index.isdigit():
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if int(index) >= count:
        raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return name


def device_index(device: str) -> int:
    """The CUDA ordinal of ``cuda:N``."""
    return int(device.partition(":")[2] or 0)


class GpuGate:
    """Bounds how many models run on each GPU at once (process-wide).

    Parameters
    ----------
    slots : int
        Concurrent model runs allowed per GPU.
    """

    def __init__(self, slots: int = DEFAULT_GPU_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._slots = slots
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def hold(self, device: str) -> Iterator[None]:
        """Hold one slot of ``device`` for the duration; CPU devices are not gated."""
        if not device.startswith("cuda"):
            yield
            return
        with self._lock:
            semaphore = self._semaphores.setdefault(device, threading.BoundedSemaphore(self._slots))
        if not semaphore.acquire(blocking=False):
            logger.debug("waiting for a free slot on %s", device)
            semaphore.acquire()
        try:
            yield
        finally:
            semaphore.release()


SHARED_GATE = GpuGate()
"""The gate every model uses unless `load_model` is given another."""
