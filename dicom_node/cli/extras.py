"""The optional extras some commands need (``train``: torch; ``import``: monai, nnunetv2).

A command imports its extra's subpackage lazily, when it runs, so that the node and
every other command work without it; when the import fails it ends with exit status 2
and a line that says what to install (`missing_extra`).
"""

from __future__ import annotations

import sys


def missing_extra(what: str, extra: str, error: ImportError) -> int:
    """Say on stderr that ``what`` needs the optional ``extra`` (and why its import
    failed); the exit status of a command without it, 2."""
    print(
        f"{what} needs the {extra} extra: pip install 'dicom-ai-node[{extra}]' ({error})",
        file=sys.stderr,
    )
    return 2
