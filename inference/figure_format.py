"""Validation figures as printed in reports and model cards: one format everywhere.

The report (`inference.finetune.report`, which needs matplotlib) and the model card
(`inference.model_card_markdown`, which the node prints without it) show the same numbers;
both format them here so that a figure reads the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value: object, digits: int = 3) -> str:
    """A figure as printed: floats to ``digits`` decimals, ``None`` as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def interval_text(interval: Sequence[float | None] | None, note: str | None) -> str:
    """``95% CI 0.712-0.934``, or why there is none."""
    if interval is None:
        return note or "no interval"
    return f"95% CI {fmt(interval[0])}-{fmt(interval[1])}"


__all__ = ["fmt", "interval_text"]
