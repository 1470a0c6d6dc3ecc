"""Networks for fine-tuning: torchvision backbones with a new head, and a small U-Net.

A classifier is split into an ``encoder`` (everything up to the last feature map)
and a ``head`` (global average pooling, then one linear layer), so that the exported
graph can give the feature map as a second output and the node can compute class
activation maps from the head's weights. Pretrained weights are read from a local
state dict in torchvision's own key layout (a hospital has no internet); the head in
that file is dropped because the task's labels replace it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional

logger = logging.getLogger(__name__)


class Backbone(StrEnum):
    """The networks `build_network` knows."""

    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    DENSENET121 = "densenet121"
    SHUFFLENET_V2_X0_5 = "shufflenet_v2_x0_5"  # 0.35 M parameters: small packages
    UNET_RESNET18 = "unet_resnet18"
    UNET_RESNET34 = "unet_resnet34"

    @property
    def segmentation(self) -> bool:
        """Whether the network predicts masks rather than labels."""
        return self.value.startswith("unet_")

    @property
    def encoder_name(self) -> str:
        """The torchvision classification network the encoder comes from."""
        return self.value.removeprefix("unet_")


_HEAD_PREFIXES = ("fc.", "classifier.")
_LSE_SHARPNESS = 4.0  # log-mean-exp pooling: larger is closer to the maximum


class Classifier(nn.Module):
    """Encoder, global pooling and a linear head; returns logits and the feature map.

    With ``pooling = "avg"`` the logits are the linear head on the spatially averaged
    features (Zhou et al. 2016). With ``"max"`` the head is applied at every location
    and the logit is the highest of these (Oquab et al. 2015): the class activation
    map the node draws, ``head.weight @ features``, is then exactly the per-location
    logit, so its peak is where the finding was seen rather than anywhere in the
    broad context a deep network's receptive field covers.

    Parameters
    ----------
    stages : sequence of nn.Module
        The encoder in depth order; freezing works stage by stage.
    channels : int
        Width of the last feature map.
    labels : int
        Number of outputs of the new head.
    pooling : str
        ``avg``, ``max``, or ``lse`` (log-mean-exp, a smooth maximum that trains
        more easily than ``max`` and localizes like it).
    """

    def __init__(
        self, stages: Sequence[nn.Module], channels: int, labels: int, pooling: str = "avg"
    ) -> None:
        super().__init__()
        if pooling not in ("avg", "max", "lse"):
            raise ValueError(f"pooling must be 'avg', 'max' or 'lse', got {pooling!r}")
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, labels)
        self.pooling = pooling

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits (N, labels), last feature map (N, channels, h, w))."""
        features = image
        for stage in self.stages:
            features = stage(features)
        if self.pooling == "avg":
            return self.head(features.mean(dim=(2, 3))), features
        cam = torch.einsum("nchw,lc->nlhw", features, self.head.weight).flatten(2)
        if self.pooling == "max":
            return cam.amax(dim=2) + self.head.bias, features
        # Log-mean-exp: a smooth maximum, so every location gets some gradient.
        pooled = torch.logsumexp(cam * _LSE_SHARPNESS, dim=2) - math.log(cam.shape[2])
        return pooled / _LSE_SHARPNESS + self.head.bias, features


class _Decode(nn.Module):
    """Upsample, concatenate the skip connection, two 3x3 convolutions."""

    def __init__(self, low: int, skip: int, out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(low + skip, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        )

    def forward(self, low: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = low.shape[-2] * 2, low.shape[-1] * 2
        up = functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
        return self.block(up if skip is None else torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """A U-Net whose encoder is a torchvision ResNet, so that it can start pretrained.

    The input size must be a multiple of 32. The output has ``labels + 1`` channels
    (background first), at the input's resolution, for a softmax.
    """

    def __init__(self, stages: Sequence[nn.Module], widths: Sequence[int], labels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        # widths: the stem (1/2), then layer1..layer4 (1/4 .. 1/32).
        decoder = []
        low = widths[-1]
        for skip, out in zip(
            reversed(widths[:-1]), (256, 128, 64, 32)[: len(widths) - 1], strict=True
        ):
            decoder.append(_Decode(low, skip, out))
            low = out
        self.decoder = nn.ModuleList(decoder)
        self.final = _Decode(low, 0, 16)
        self.out = nn.Conv2d(16, labels + 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return logits (N, labels + 1, H, W)."""
        skips = []
        features = image
        for stage in self.stages:
            features = stage(features)
            skips.append(features)
        features = skips.pop()
        for block in self.decoder:
            features = block(features, skips.pop())
        return self.out(self.final(features, None))


def _resnet_stages(model: torchvision.models.ResNet) -> list[nn.Module]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu)
    return [
        stem,
        nn.Sequential(model.maxpool, model.layer1),
        model.layer2,
        model.layer3,
        model.layer4,
    ]


def _densenet_stages(model: torchvision.models.DenseNet) -> list[nn.Module]:
    f = model.features
    return [
        nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0),
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5, nn.ReLU(inplace=False)),
    ]


def _shufflenet_stages(model: torchvision.models.ShuffleNetV2) -> list[nn.Module]:
    return [
        nn.Sequential(model.conv1, model.maxpool),
        model.stage2,
        model.stage3,
        model.stage4,
        model.conv5,
    ]


def _torchvision_model(name: str) -> nn.Module:
    factory = getattr(torchvision.models, name)
    model: nn.Module = factory(weights=None)
    return model


def load_pretrained(model: nn.Module, weights: Path) -> int:
    """Load a torchvision-layout state dict into a model, leaving its head out.

    Parameters
    ----------
    model : nn.Module
        The torchvision network, before its head is replaced.
    weights : pathlib.Path
        A file written by ``torch.save(model.state_dict(), path)``.

    Returns
    -------
    int
        The number of tensors loaded.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file is not a state dict, or a tensor is missing or has the wrong
        shape for this backbone (the message names the key).
    """
    if not weights.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {weights}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: not a state dict (got {type(state).__name__})")
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    for key, own_tensor in own.items():
        if key.startswith(_HEAD_PREFIXES):
            continue
        if key not in body:
            raise ValueError(f"{weights}: tensor {key!r} missing for this backbone")
        if tuple(body[key].shape) != tuple(own_tensor.shape):
            raise ValueError(
                f"{weights}: tensor {key!r} has shape {tuple(body[key].shape)}, "
                f"the backbone needs {tuple(own_tensor.shape)}"
            )
    unexpected = sorted(set(body) - set(own))
    if unexpected:
        raise ValueError(f"{weights}: tensors not in this backbone, e.g. {unexpected[:3]}")
    model.load_state_dict(body, strict=False)
    logger.info("loaded %d pretrained tensors from %s", len(body), weights)
    return len(body)


def _adapt_input(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """Give the first convolution ``channels`` inputs, keeping what it learnt.

    Grey images get the sum of the RGB filters (a grey image replicated to RGB would
    give exactly that response), so pretrained weights stay meaningful.
    """
    if conv.in_channels == channels:
        return conv
    if channels != 1:
        raise ValueError(f"input channels {channels}: only 1 or 3 are supported")
    kernel, stride = conv.kernel_size, conv.stride
    padding = conv.padding if isinstance(conv.padding, str) else (conv.padding[0], conv.padding[1])
    new = nn.Conv2d(
        1,
        conv.out_channels,
        (kernel[0], kernel[1]),
        (stride[0], stride[1]),
        padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _reduce_stride(stages: Sequence[nn.Module], output_stride: int) -> None:
    """Turn the last stride-2 convolutions into stride 1 so the feature map is finer.

    A 128-pixel input gives a 4 x 4 map at output stride 32, too coarse for a class
    activation map to point at a small finding; stride 8 gives 16 x 16. The weights
    keep their shapes, so pretrained weights still load.
    """
    factor = 32 // output_stride
    for stage in reversed(stages[1:]):  # the deepest downsampling stages first
        if factor == 1:
            break
        strided = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        for module in strided:
            module.stride = (1, 1)
        if strided:
            factor //= 2


def build_network(
    backbone: Backbone | str,
    labels: int,
    channels: int,
    weights: Path | None = None,
    output_stride: int = 32,
    pooling: str = "avg",
    depth: int = 5,
) -> nn.Module:
    """Build a network for the task, optionally from local pretrained weights.

    Parameters
    ----------
    backbone : Backbone or str
        ``resnet18``, ``resnet50``, ``densenet121``, ``shufflenet_v2_x0_5``
        (classifiers) or
        ``unet_resnet18``, ``unet_resnet34`` (segmentation).
    labels : int
        Number of labels (segmentation adds a background channel).
    channels : int
        Input channels (1 or 3).
    weights : pathlib.Path, optional
        A torchvision-layout state dict for the backbone; ``None``: random
        initialisation.
    output_stride : int
        32 (the backbone as designed), 16 or 8: a finer last feature map for CAM
        (ResNet and ShuffleNet classifiers only).
    pooling : str
        A classifier's global pooling, ``avg``, ``max`` or ``lse`` (see `Classifier`).
    depth : int
        How many of the 5 encoder stages a classifier keeps (ResNet, ShuffleNet): a
        shallower encoder sees less context, so its CAM stays at the finding.

    Returns
    -------
    nn.Module
        A `Classifier` or a `UNet`.

    Raises
    ------
    ValueError
        When the backbone name is unknown, the weights do not fit it, or the
        channel count is neither 1 nor 3.
    FileNotFoundError
        When the weights file does not exist.
    """
    try:
        kind = Backbone(backbone)
    except ValueError as exc:
        raise ValueError(
            f"unknown backbone {backbone!r}; choose one of {[b.value for b in Backbone]}"
        ) from exc
    if labels < 1:
        raise ValueError(f"labels must be at least 1, got {labels}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if not 1 <= depth <= 5 or (depth < 5 and (kind.segmentation or kind is Backbone.DENSENET121)):
        raise ValueError(f"depth {depth}: 1-5 stages, below 5 for ResNet/ShuffleNet classifiers")
    if output_stride != 32 and (kind.segmentation or kind is Backbone.DENSENET121):
        raise ValueError(f"output_stride {output_stride} applies to ResNet/ShuffleNet classifiers")
    model = _torchvision_model(kind.encoder_name)
    if weights is not None:
        load_pretrained(model, weights)
    if isinstance(model, torchvision.models.ResNet):
        model.conv1 = _adapt_input(model.conv1, channels)
        stages = _resnet_stages(model)
        width = _resnet_widths(model)[depth - 1]
    elif isinstance(model, torchvision.models.DenseNet):
        model.features.conv0 = _adapt_input(model.features.conv0, channels)
        stages = _densenet_stages(model)
        width = model.classifier.in_features
    elif isinstance(model, torchvision.models.ShuffleNetV2):
        model.conv1[0] = _adapt_input(model.conv1[0], channels)
        stages = _shufflenet_stages(model)
        width = int(model._stage_out_channels[depth - 1])
    else:  # pragma: no cover - Backbone lists only these families
        raise ValueError(f"backbone {kind} has no stage split")
    _reduce_stride(stages, output_stride)
    if kind.segmentation:
        assert isinstance(model, torchvision.models.ResNet)  # Backbone: unet_resnet* only
        return UNet(stages, _resnet_widths(model), labels)
    return Classifier(stages[:depth], width, labels, pooling)


def _resnet_widths(model: torchvision.models.ResNet) -> list[int]:
    """Output channels of the stem and of layer1..layer4."""
    widths = [model.conv1.out_channels]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        block = layer[-1]
        norm = block.bn3 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.bn2
        widths.append(int(norm.num_features))
    return widths


def encoder_stages(model: nn.Module) -> nn.ModuleList:
    """The encoder stages of a network from `build_network`, shallowest first.

    Raises
    ------
    TypeError
        When the model was not built by `build_network`.
    """
    if isinstance(model, Classifier | UNet):
        return model.stages
    raise TypeError(f"not a fine-tuning network: {type(model).__name__}")


def set_frozen(model: nn.Module, frozen_stages: int) -> None:
    """Freeze the first ``frozen_stages`` encoder stages; unfreeze the rest.

    Frozen stages also keep their batch-norm statistics (eval mode), so that a small
    local dataset does not overwrite what the pretrained network measured.
    """
    for index, stage in enumerate(encoder_stages(model)):
        frozen = index < frozen_stages
        for parameter in stage.parameters():
            parameter.requires_grad_(not frozen)
        stage.train(model.training and not frozen)


def head_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (encoder, new layers) for two learning rates.

    The pretrained encoder learns at a lower rate than the randomly initialised
    head (and decoder), so that fine-tuning adapts rather than overwrites it.

    Raises
    ------
    TypeError
        When the model was not built by `build_network`.
    """
    encoder_ids = {id(p) for p in encoder_stages(model).parameters()}
    encoder = [p for p in model.parameters() if id(p) in encoder_ids]
    new = [p for p in model.parameters() if id(p) not in encoder_ids]
    return encoder, new
