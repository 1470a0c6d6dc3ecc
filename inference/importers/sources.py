"""Reading a source model's files: JSON documents, licence texts, checkpoints, hashes.

Shared by the MONAI bundle and nnU-Net importers so that a missing or broken file
fails the same way, naming the file. Checkpoints are loaded with
``weights_only=True`` (tensors and plain containers only): a checkpoint is a pickle,
and one holding arbitrary objects runs code when loaded, so that needs the user's
explicit ``allow_pickle``. NumPy scalars and dtypes are allowed on top (data, not
code): nnU-Net keeps its training log in them.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

from inference.importers.errors import ImportModelError


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a source file.

    Raises
    ------
    ImportModelError
        When the file is missing or does not hold a JSON object.
    """
    if not path.is_file():
        raise ImportModelError(path, "-", "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportModelError(path, "-", f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ImportModelError(path, "-", f"holds a {type(data).__name__}, not a JSON object")
    return data


def require(data: dict[str, Any], path: Path, *keys: str) -> Any:
    """A nested value, or an error naming the file and the full key."""
    value: Any = data
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ImportModelError(path, ".".join(keys[: depth + 1]), "missing")
        value = value[key]
    return value


def sha256(*paths: Path) -> str:
    """The SHA-256 of the files' contents in order, as hex."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: Path, allow_pickle: bool) -> Any:
    """A torch checkpoint, loaded on the CPU.

    Raises
    ------
    ImportModelError
        When the file is missing or unreadable, or holds objects beyond tensors and
        ``allow_pickle`` is false.
    """
    import numpy as np
    import torch
    from numpy._core.multiarray import scalar

    if not path.is_file():
        raise ImportModelError(path, "-", "file not found")
    numpy_data: list[Any] = [scalar, np.dtype, *(type(np.dtype(t)) for t in np.typecodes["All"])]
    try:
        with torch.serialization.safe_globals(numpy_data):
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise ImportModelError(
            path,
            "-",
            "holds Python objects beyond tensors; loading it runs code from the file: "
            f"pass --allow-pickle if you trust it ({str(exc).splitlines()[0]})",
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ImportModelError(path, "-", f"not a readable torch checkpoint: {exc}") from exc
