"""Fine-tuning tests need the train extra (torch, torchvision, matplotlib): without it
the folder is not collected, as the node itself runs without torch."""

from __future__ import annotations

import importlib.util

_TRAIN_EXTRA = ("torch", "torchvision", "matplotlib")

collect_ignore_glob = (
    [] if all(importlib.util.find_spec(name) for name in _TRAIN_EXTRA) else ["test_*.py"]
)
