"""The one interface every backend implements, and what it is built with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from inference.package import ModelPackage

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BackendOptions:
    """How to run: the resolved device and the knobs the node config passes on."""

    device: str = "cpu"
    intra_op_threads: int = 0  # 0: the library's default
    inter_op_threads: int = 0
    cache_dir: Path | None = None  # TensorRT engine cache


class Backend(ABC):
    """Runs batches through one model on one device.

    Subclasses load the network in ``__init__`` (raising `BackendUnavailableError`
    when their library or device is missing) and implement `infer`.
    """

    name: ClassVar[str]

    def __init__(self, package: ModelPackage, options: BackendOptions) -> None:
        self.package = package
        self.options = options

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N``."""
        return self.options.device

    @abstractmethod
    def infer(self, batches: Iterable[Array]) -> dict[str, Array]:
        """Run every batch and return each graph output, batches concatenated.

        Parameters
        ----------
        batches : iterable of numpy.ndarray
            float32 batches of at most ``runtime.max_batch`` inputs each, produced
            while earlier ones run (the iterable may still be decoding).

        Returns
        -------
        dict of str to numpy.ndarray
            float32 outputs by graph output name, concatenated along the batch axis.
        """

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release device memory and sessions."""


def concatenate(parts: dict[str, list[Array]]) -> dict[str, Array]:
    """Join per-batch outputs along the batch axis, as float32; empty when nothing ran.

    One batch is returned as it is (no copy): a window batch of a many-label 3D
    model is tens of megabytes.
    """
    return {
        name: (chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)).astype(
            np.float32, copy=False
        )
        for name, chunks in parts.items()
        if chunks
    }
