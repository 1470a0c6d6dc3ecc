"""Writing ``model.toml``: a small TOML serializer for the package spec's data.

The standard library reads TOML but does not write it; the spec is tables of
strings, numbers, booleans, lists and arrays of tables, which is all this covers.
``None`` values are left out (TOML has no null, and every optional spec field
defaults to ``None`` when absent).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _scalar(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{key}: {value} cannot be written to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v, key) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{k} = {_scalar(v, key)}" for k, v in value.items() if v is not None)
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"{key}: cannot write {type(value).__name__} to TOML")


def _is_table_list(value: Any) -> bool:
    return (
        isinstance(value, list | tuple) and bool(value) and all(isinstance(v, dict) for v in value)
    )


def _table(data: dict[str, Any], path: str, lines: list[str], inline_depth: int) -> None:
    simple = {
        k: v
        for k, v in data.items()
        if v is not None and not isinstance(v, dict) and not _is_table_list(v)
    }
    nested = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if _is_table_list(v)}
    for key, value in simple.items():
        lines.append(f"{key} = {_scalar(value, f'{path}.{key}')}")
    for key, value in nested.items():
        if inline_depth > 0:
            lines.append(f"{key} = {_scalar(value, f'{path}.{key}')}")
            continue
        lines += ["", f"[{path}.{key}]" if path else f"[{key}]"]
        _table(value, f"{path}.{key}" if path else key, lines, inline_depth)
    for key, items in arrays.items():
        name = f"{path}.{key}" if path else key
        for item in items:
            lines += ["", f"[[{name}]]"]
            _table(item, name, lines, inline_depth=1)


def dumps(data: dict[str, Any], header: str = "") -> str:
    """Serialise nested dicts to TOML text.

    Parameters
    ----------
    data : dict
        Tables of scalars, lists, nested tables and lists of tables.
    header : str
        A comment block written first (each line prefixed with ``#``).

    Returns
    -------
    str

    Raises
    ------
    TypeError, ValueError
        When a value has no TOML form (an object, NaN or infinity).
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _table(data, "", lines, inline_depth=0)
    return "\n".join(lines).lstrip("\n") + "\n"
