"""Learning-rate schedules for fine-tuning: linear warm-up, then cosine or step decay.

A warm-up matters when a new, randomly initialised head sits on a pretrained
encoder: large early gradients from the head would otherwise wreck the pretrained
features in the first steps. The schedule is a pure function of the epoch, so that a
resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
from enum import StrEnum


class ScheduleKind(StrEnum):
    """The decay after warm-up."""

    COSINE = "cosine"
    STEP = "step"
    CONSTANT = "constant"


def lr_factor(
    epoch: int,
    epochs: int,
    kind: ScheduleKind | str = ScheduleKind.COSINE,
    warmup_epochs: int = 1,
    step_size: int = 10,
    step_gamma: float = 0.1,
    floor: float = 0.01,
) -> float:
    """Multiplier of the base learning rate for a 0-based epoch.

    Parameters
    ----------
    epoch, epochs : int
        The current epoch and the total number of epochs.
    kind : ScheduleKind or str
        ``cosine`` decays to ``floor`` at the last epoch, ``step`` multiplies by
        ``step_gamma`` every ``step_size`` epochs, ``constant`` keeps the rate.
    warmup_epochs : int
        Epochs of linear warm-up from ``1 / (warmup_epochs + 1)`` of the rate.
    step_size, step_gamma : int, float
        The step schedule.
    floor : float
        The cosine schedule's final multiplier.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When ``kind`` is unknown or the epoch counts are negative.
    """
    if epoch < 0 or epochs < 1 or warmup_epochs < 0:
        raise ValueError(f"bad epoch {epoch} of {epochs} with {warmup_epochs} warm-up epochs")
    kind = ScheduleKind(kind)
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if kind is ScheduleKind.CONSTANT:
        return 1.0
    if kind is ScheduleKind.STEP:
        return float(step_gamma ** ((epoch - warmup_epochs) // max(1, step_size)))
    span = max(1, epochs - warmup_epochs - 1)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
