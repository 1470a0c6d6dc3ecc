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


class PeerError(DicomNodeError):
    """A peer could not be reached, refused or dropped us, or did not answer; ``reason``
    says which (`dicom_node.net.scu.AssociationError` adds the peer)."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)
