"""Importer tests need the import extra (monai, nnunetv2, torch): without it the folder
is not collected, as the node itself runs imported packages without them."""

from __future__ import annotations

import importlib.util

_IMPORT_EXTRA = ("torch", "monai", "nnunetv2", "dynamic_network_architectures")

collect_ignore_glob = (
    [] if all(importlib.util.find_spec(name) for name in _IMPORT_EXTRA) else ["test_*.py"]
)
