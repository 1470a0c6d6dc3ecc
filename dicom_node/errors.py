"""The node's exceptions: one root, subclasses that carry the offending value."""

from __future__ import annotations


class DicomNodeError(Exception):
    """Root of every error the node raises on purpose."""


class ConfigError(DicomNodeError):
    """The config file is wrong; ``problems`` lists each one as ``(key path, message)``."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {key}: {message}" for key, message in problems)
        super().__init__(f"{path}: {len(problems)} problem(s)\n{lines}")
