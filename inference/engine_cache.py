"""Where serialized TensorRT engines live between starts, and how they are named.

An engine is only valid for the exact ONNX file, TensorRT version, GPU model and
precision (and the batch/shape profile) it was built for, so all of these go into
the key. Files are written with `atomic_write` (temp name, fsync, rename), so that a
node killed mid-write never leaves a truncated engine that the next start would load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from inference.atomic_file import atomic_write

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"


def default_cache_dir() -> Path:
    """The per-user cache folder used when the caller passes none."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicom-ai-node" / "engines"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    profile: str  # e.g. "1-8x1x256x256": batch range and input shape

    def filename(self, model_name: str) -> str:
        """A file name that is readable and unique for this key."""
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
        return f"{safe}-{self.precision}-{digest}{ENGINE_SUFFIX}"


class EngineCache:
    """A folder of serialized engines keyed by `EngineKey`.

    Parameters
    ----------
    folder : pathlib.Path
        Created on first store.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, model_name: str, key: EngineKey) -> Path:
        """Where the engine for this model and key lives."""
        return self.folder / key.filename(model_name)

    def load(self, model_name: str, key: EngineKey) -> bytes | None:
        """Return the cached engine bytes, or ``None`` when there is none."""
        path = self.path(model_name, key)
        if not path.is_file():
            return None
        logger.info("loading cached TensorRT engine %s", path)
        return path.read_bytes()

    def store(self, model_name: str, key: EngineKey, engine: bytes) -> Path:
        """Write an engine atomically (temp file, fsync, rename) and return its path.

        Raises
        ------
        OSError
            When the folder cannot be created or written.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(model_name, key)
        atomic_write(path, lambda handle: handle.write(engine))
        logger.info("stored TensorRT engine %s (%d bytes)", path, len(engine))
        return path
