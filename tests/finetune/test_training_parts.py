"""Networks, freezing, pretrained loading, losses, schedules and augmentation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torchvision

from inference.finetune.augment import AugmentConfig, augment_batch
from inference.finetune.losses import DiceCELoss, FocalLoss
from inference.finetune.networks import (
    Classifier,
    UNet,
    build_network,
    encoder_stages,
    head_parameters,
    set_frozen,
)
from inference.finetune.schedule import lr_factor


def test_classifier_returns_logits_and_last_feature_map() -> None:
    model = build_network("resnet18", labels=3, channels=1)
    assert isinstance(model, Classifier)
    logits, features = model(torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 3)
    assert features.shape == (2, 512, 1, 1)
    # The head is global average pooling and one linear layer: CAM-ready.
    expected = model.head(features.mean(dim=(2, 3)))
    assert torch.allclose(logits, expected)


def test_max_pooling_logit_is_the_peak_of_the_class_activation_map() -> None:
    model = build_network(
        "shufflenet_v2_x0_5", labels=2, channels=1, output_stride=8, pooling="max"
    ).eval()
    logits, features = model(torch.randn(2, 1, 64, 64))
    assert features.shape == (2, 1024, 8, 8)
    cam = torch.einsum("nchw,lc->nlhw", features, model.head.weight)
    assert torch.allclose(logits, cam.amax(dim=(2, 3)) + model.head.bias, atol=1e-5)
    with pytest.raises(ValueError, match="pooling must be 'avg', 'max' or 'lse'"):
        build_network("resnet18", labels=1, channels=1, pooling="sum")
    with pytest.raises(ValueError, match="output_stride 8 applies to ResNet/ShuffleNet"):
        build_network("densenet121", labels=1, channels=1, output_stride=8)


def test_shallow_encoder_keeps_the_first_stages_and_their_width() -> None:
    model = build_network("shufflenet_v2_x0_5", labels=2, channels=1, depth=2, pooling="lse")
    assert len(encoder_stages(model)) == 2
    logits, features = model(torch.randn(2, 1, 64, 64))
    assert features.shape == (2, 48, 8, 8) and logits.shape == (2, 2)
    assert build_network("resnet18", labels=1, channels=1, depth=3).head.in_features == 128
    with pytest.raises(ValueError, match="depth 2: 1-5 stages"):
        build_network("unet_resnet18", labels=1, channels=1, depth=2)


def test_unet_output_has_background_channel_at_input_resolution() -> None:
    model = build_network("unet_resnet18", labels=2, channels=1)
    assert isinstance(model, UNet)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_pretrained_weights_load_and_grey_input_sums_rgb_filters(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(weights=None, num_classes=7)
    weights = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), weights)
    model = build_network("resnet18", labels=2, channels=1, weights=weights)
    stem = encoder_stages(model)[0][0]
    assert torch.allclose(stem.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    layer4 = encoder_stages(model)[4]
    assert torch.equal(layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.head.weight.shape == (2, 512)  # the 7-class head was replaced


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "densenet.pt"
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), weights)
    with pytest.raises(ValueError, match=r"tensor 'conv1.weight' missing"):
        build_network("resnet18", labels=1, channels=3, weights=weights)
    with pytest.raises(FileNotFoundError, match="pretrained weights not found"):
        build_network("resnet18", labels=1, channels=3, weights=tmp_path / "none.pt")
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_network("vgg", labels=1, channels=3)


def test_frozen_stages_get_no_gradient_and_keep_batchnorm_statistics() -> None:
    model = build_network("resnet18", labels=1, channels=1)
    model.train()
    set_frozen(model, 3)
    stages = encoder_stages(model)
    assert not any(p.requires_grad for s in stages[:3] for p in s.parameters())
    assert all(p.requires_grad for s in stages[3:] for p in s.parameters())
    assert not stages[0].training and stages[4].training
    before = stages[1][1][0].bn1.running_mean.clone()
    logits, _ = model(torch.randn(4, 1, 32, 32))
    logits.sum().backward()
    assert stages[0][0].weight.grad is None
    assert stages[4][0].conv1.weight.grad is not None
    assert torch.equal(before, stages[1][1][0].bn1.running_mean)
    set_frozen(model, 0)
    assert all(p.requires_grad for p in model.parameters())
    encoder, new = head_parameters(model)
    assert len(encoder) + len(new) == len(list(model.parameters()))
    assert {id(p) for p in new} == {id(model.head.weight), id(model.head.bias)}


def test_focal_loss_is_bce_at_gamma_zero_and_smaller_on_easy_examples() -> None:
    logits = torch.tensor([[3.0], [-2.0], [0.5]])
    targets = torch.tensor([[1.0], [0.0], [0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.isclose(FocalLoss(gamma=0.0, alpha=None)(logits, targets), bce)
    assert FocalLoss(gamma=2.0, alpha=None)(logits, targets) < bce
    with pytest.raises(ValueError, match="focal alpha"):
        FocalLoss(alpha=1.5)


def test_dice_ce_loss_prefers_the_right_mask() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    right = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 10
    wrong = torch.nn.functional.one_hot(1 - target, 2).permute(0, 3, 1, 2).float() * 10
    loss = DiceCELoss()
    assert loss(right, target) < 0.01 < loss(wrong, target)


def test_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(e, 10, "cosine", warmup_epochs=2) for e in range(10)]
    assert factors[0] < factors[1] < factors[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[2:]))
    assert factors[-1] == pytest.approx(0.01)
    assert lr_factor(25, 30, "step", warmup_epochs=0, step_size=10) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="'linear' is not a valid ScheduleKind"):
        lr_factor(0, 10, "linear")


def test_augmentation_is_seeded_and_moves_masks_with_images() -> None:
    images = torch.zeros(2, 1, 32, 32)
    images[:, :, 8:16, 8:16] = 1.0
    masks = (images[:, 0] > 0.5).long()
    config = AugmentConfig(
        rotation_degrees=30,
        flip_horizontal=0.5,
        elastic_alpha=0.05,
        brightness=0.0,
        contrast=0.0,
        noise_std=0.0,
    )
    a, ma = augment_batch(images, config, torch.Generator().manual_seed(3), masks)
    b, mb = augment_batch(images, config, torch.Generator().manual_seed(3), masks)
    assert torch.equal(a, b) and ma is not None and mb is not None and torch.equal(ma, mb)
    assert not torch.equal(a, images)
    assert set(ma.unique().tolist()) <= {0, 1}
    # Without intensity changes, the moved mask covers where the moved square is bright.
    assert ((a[:, 0] > 0.5) == (ma == 1)).float().mean() > 0.95
    with pytest.raises(ValueError, match="flip_horizontal is a probability"):
        AugmentConfig(flip_horizontal=2.0)
