"""Training-time augmentation on preprocessed batches: geometry, elastic, intensity.

Augmentation runs after the node's preprocessing, on the model-input tensors, so
that it never changes what serving sees: rotations, flips, a smooth elastic
deformation and a small scale change are folded into one sampling grid (one
interpolation, masks moved by exactly the same field), then brightness, contrast
and noise change the image only. Every random draw comes from the caller's
generator, so that a seeded run is repeatable.
"""

from __future__ import annotations

import math

import torch
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch.nn import functional


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class AugmentConfig:
    """How strongly to augment; zeros switch a transform off.

    Also the ``[training.augment]`` section of a training config (unknown keys are
    errors there), so that the keys and their ranges are defined once.

    Parameters
    ----------
    rotation_degrees : float
        Uniform rotation in [-d, d].
    flip_horizontal, flip_vertical : float
        Probability of a left-right / up-down flip. Leave left-right at 0 where
        laterality matters (a heart on the wrong side is not a chest X-ray).
    scale : float
        Uniform zoom factor in [1 - s, 1 + s].
    elastic_alpha : float
        Largest displacement of the elastic field, as a fraction of the image size.
    elastic_grid : int
        Control points per axis of the elastic field (fewer: smoother).
    brightness, contrast : float
        Uniform shift in [-b, b] and gain in [1 - c, 1 + c] of the intensities.
    noise_std : float
        Standard deviation of added Gaussian noise.
    """

    rotation_degrees: float = 10.0
    flip_horizontal: float = 0.0
    flip_vertical: float = 0.0
    scale: float = 0.1
    elastic_alpha: float = 0.03
    elastic_grid: int = 4
    brightness: float = 0.1
    contrast: float = 0.1
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("flip_horizontal", "flip_vertical"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {value}")
        for name in (
            "rotation_degrees",
            "scale",
            "elastic_alpha",
            "brightness",
            "contrast",
            "noise_std",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.elastic_grid < 2:
            raise ValueError(f"augment.elastic_grid must be >= 2, got {self.elastic_grid}")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _flip_sign(n: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator) < probability, -1.0, 1.0)


def sampling_grid(
    shape: tuple[int, int, int, int], config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """A random grid for ``grid_sample``: rotation, flips, zoom and elastic field.

    Parameters
    ----------
    shape : (N, C, H, W)
        The batch shape.
    config : AugmentConfig
    generator : torch.Generator
        A CPU generator; the grid is created on the CPU.

    Returns
    -------
    torch.Tensor
        (N, H, W, 2) normalised sampling coordinates.
    """
    n, _, height, width = shape
    angle = _uniform(n, -1, 1, generator) * math.radians(config.rotation_degrees)
    zoom = _uniform(n, 1 - config.scale, 1 + config.scale, generator)
    sx = _flip_sign(n, config.flip_horizontal, generator) / zoom
    sy = _flip_sign(n, config.flip_vertical, generator) / zoom
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * sy
    grid = functional.affine_grid(theta, [n, 1, height, width], align_corners=False)
    if config.elastic_alpha > 0:
        k = config.elastic_grid
        coarse = (torch.rand(n, 2, k, k, generator=generator) * 2 - 1) * 2 * config.elastic_alpha
        field = functional.interpolate(
            coarse, size=(height, width), mode="bicubic", align_corners=True
        )
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch of model inputs and, for segmentation, their masks alike.

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W) float model inputs.
    config : AugmentConfig
    generator : torch.Generator
        CPU generator that every random draw comes from.
    masks : torch.Tensor, optional
        (N, H, W) integer label maps, moved by the same geometric transform
        (nearest neighbour, so labels stay labels).

    Returns
    -------
    (images, masks)
        The augmented batch; masks is ``None`` when none were given.
    """
    n = images.shape[0]
    grid = sampling_grid(tuple(images.shape), config, generator).to(images.device)  # type: ignore[arg-type]
    out = functional.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    gain = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator)
    shift = _uniform(n, -config.brightness, config.brightness, generator)
    noise = torch.randn(out.shape, generator=generator) * config.noise_std
    out = out * gain.view(n, 1, 1, 1).to(out) + shift.view(n, 1, 1, 1).to(out) + noise.to(out)
    if masks is None:
        return out, None
    moved = functional.grid_sample(
        masks[:, None].float(),
        grid.to(torch.float32),
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    )
    return out, moved[:, 0].round().to(masks.dtype)
