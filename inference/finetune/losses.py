"""Losses for small, imbalanced medical datasets: focal loss and dice plus cross-entropy.

Focal loss (Lin et al. 2017) down-weights the many easy negatives so that a rare
finding still drives the gradient; dice loss optimises overlap directly, which
cross-entropy alone does poorly when a lesion covers a few pixels, and the
cross-entropy term keeps the gradient well behaved early in training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class FocalLoss(nn.Module):
    """Sigmoid focal loss for independent labels.

    Parameters
    ----------
    gamma : float
        Focusing parameter; 0 gives (alpha-weighted) binary cross-entropy.
    alpha : float or None
        Weight of the positive class in [0, 1]; ``None`` weighs both classes alike.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1], got {alpha}")
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over samples and labels; targets are 0/1 of the logits' shape."""
        logits = logits.float()
        targets = targets.float()
        ce = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_true = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_true) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()


class DiceCELoss(nn.Module):
    """Soft dice over the foreground labels plus cross-entropy, for softmax masks.

    Parameters
    ----------
    dice_weight : float
        Weight of the dice term; cross-entropy has weight 1.
    smooth : float
        Added to numerator and denominator so that empty masks give a finite loss.
    """

    def __init__(self, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss for logits (N, L+1, H, W) and integer targets (N, H, W) in [0, L]."""
        logits = logits.float()
        ce = functional.cross_entropy(logits, targets)
        probabilities = torch.softmax(logits, dim=1)[:, 1:]
        onehot = functional.one_hot(targets, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:]
        onehot = onehot.to(probabilities.dtype)
        dims = (0, 2, 3)
        overlap = (probabilities * onehot).sum(dims)
        total = probabilities.sum(dims) + onehot.sum(dims)
        dice = (2 * overlap + self.smooth) / (total + self.smooth)
        return ce + self.dice_weight * (1 - dice.mean())
