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


class PeerUnavailable(DicomNodeError):
    """A peer gave no usable answer (no association, no HTTP response, an error status);
    ``reason`` says why. Subclasses: ``scu.AssociationError`` (DIMSE) and
    ``dicomweb_auth.DicomwebError`` (DICOMweb)."""

    reason: str
