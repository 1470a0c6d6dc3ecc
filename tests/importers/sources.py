"""Small source models built inside the tests: a MONAI bundle and an nnU-Net v2 result.

Both networks are trained for a few seconds (small patches, few steps: they need an
intensity-dependent answer, not a good one) on generated CT-like volumes to label
soft tissue (-100 to 300 HU) and bone (>= 300 HU), so that their output depends on
intensity and real CT gives both labels. They have no normalisation layers. Both
networks downsample (a stride-2 stage), so their answer near a window's edge depends
on where the window lies and how it is weighed: the node places and weighs windows
exactly as each tool does (MONAI's Gaussian centred at (n - 1) / 2, nnU-Net's at
n // 2), so both still agree. With MONAI's Gaussian for the nnU-Net package, the
soft-tissue volume was 1.01% off nnU-Net's.
The bundle's ``inference.json`` is written the way Model Zoo bundles are (LoadImaged
with MONAI's DICOM reader, Orientation, Spacing, ScaleIntensityRange, a Gaussian
SlidingWindowInferer, softmax, Invertd, argmax, SaveImaged), so ``monai.bundle run``
runs it unchanged.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage
from torch import nn

SOFT_TISSUE_HU, BONE_HU = -100.0, 300.0
LABELS = ("soft_tissue", "bone")
TRAIN_SHAPE = [8, 16, 16]  # fully convolutional: small training patches are enough
BUNDLE_PATCH = [32, 32, 16]
NNUNET_PATCH = [16, 32, 32]
CT_PROPERTIES = {"mean": 100.0, "std": 300.0, "percentile_00_5": -900.0, "percentile_99_5": 1200.0}

BUNDLE_NETWORK: dict[str, Any] = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [8, 16],
    "strides": [2],
    "num_res_units": 1,
    "norm": None,
}

INFERENCE_JSON: dict[str, Any] = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data",
    "datalist": "$[@dataset_dir]",
    "device": "$torch.device('cpu')",
    "network_def": BUNDLE_NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "PydicomReader"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [1.5, 1.5, 2.0],
                "mode": "bilinear",
            },
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -1000,
                "a_max": 1000,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": BUNDLE_PATCH,
        "sw_batch_size": 4,
        "overlap": 0.25,
        "mode": "gaussian",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_postfix": "seg",
                "resample": False,
                "separate_folder": False,
            },
        ],
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        }
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": False,
    },
    "run": ["$@evaluator.run()"],
}

METADATA_JSON: dict[str, Any] = {
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json",
    "version": "0.3.1",
    "name": "Test soft tissue and bone CT segmentation",
    "description": "A tiny 3D UNet labelling soft tissue and bone, for the importer tests.",
    "authors": "DICOM AI node tests",
    "intended_use": "Tests only, not for clinical use.",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "hounsfield",
                "modality": "CT",
                "num_channels": 1,
                "spatial_shape": BUNDLE_PATCH,
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 3,
                "spatial_shape": BUNDLE_PATCH,
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "background", "1": "soft_tissue", "2": "bone"},
            }
        },
    },
}


def hu_labels(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """The ground truth the test networks learn: 0 background, 1 soft tissue, 2 bone."""
    return np.where(hu >= BONE_HU, 2, np.where(hu >= SOFT_TISSUE_HU, 1, 0)).astype(np.int64)


def scale_range(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The bundle's ScaleIntensityRange (-1000..1000 HU to 0..1, clipped)."""
    return np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0).astype(np.float32)


def ct_normalization(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """nnU-Net's CTNormalization with the test plans' intensity properties."""
    p = CT_PROPERTIES
    clipped = np.clip(hu, p["percentile_00_5"], p["percentile_99_5"])
    return ((clipped - p["mean"]) / p["std"]).astype(np.float32)


def _phantoms(rng: np.random.Generator, shape: list[int], count: int) -> npt.NDArray[np.float32]:
    """Smooth random HU fields from air to dense bone."""
    noise = rng.standard_normal((count, *shape)).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(n, 2.0) for n in noise])
    smooth /= smooth.std() + 1e-6
    return (smooth * 600.0 + 50.0).astype(np.float32)


def train(
    network: nn.Module,
    to_input: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    steps: int = 25,
) -> dict[str, torch.Tensor]:
    """A few Adam steps towards `hu_labels`; returns the state dict (CPU, fixed seed, one
    thread so that the weights are the same in every run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(network, to_input, steps)
    finally:
        torch.set_num_threads(threads)


def _train(
    network: nn.Module,
    to_input: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    steps: int,
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    hu = _phantoms(rng, TRAIN_SHAPE, 16)
    images = torch.from_numpy(to_input(hu))[:, None]
    targets = torch.from_numpy(hu_labels(hu))
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-2)
    network.train()
    for step in range(steps):
        batch = [(2 * step + i) % len(images) for i in range(4)]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(network(images[batch]), targets[batch])
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in network.eval().state_dict().items()}


@cache
def bundle_weights() -> dict[str, torch.Tensor]:
    """The trained bundle UNet's weights (trained once per test session)."""
    from monai.networks.nets import UNet

    kwargs = {k: v for k, v in BUNDLE_NETWORK.items() if k != "_target_"}
    return train(UNet(**kwargs), scale_range)


def write_bundle(
    folder: Path,
    inference: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A MONAI bundle folder; ``inference``/``metadata`` replace the defaults."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = copy.deepcopy(INFERENCE_JSON if inference is None else inference)
    meta = copy.deepcopy(METADATA_JSON if metadata is None else metadata)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.save(bundle_weights() if weights is None else weights, folder / "models" / "model.pt")
    (folder / "LICENSE").write_text("Test licence: Apache-2.0, for the importer tests.\n")
    return folder


def bundle_run_command(bundle: Path, dicom: Path, out: Path) -> list[str]:
    """``python -m monai.bundle run`` of a bundle on a DICOM folder, NIfTI into ``out``."""
    configs = bundle / "configs"
    return [
        *(sys.executable, "-m", "monai.bundle", "run"),
        *("--config_file", str(configs / "inference.json")),
        *("--meta_file", str(configs / "metadata.json")),
        *("--bundle_root", str(bundle), "--dataset_dir", str(dicom), "--output_dir", str(out)),
    ]


ARCH_KWARGS: dict[str, Any] = {
    "n_stages": 2,
    "features_per_stage": [8, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 1, 1], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2]],
    "n_conv_per_stage": [2, 2],
    "n_conv_per_stage_decoder": [2],
    "conv_bias": True,
    "norm_op": None,
    "norm_op_kwargs": None,
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}

DATASET_JSON: dict[str, Any] = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "soft_tissue": 1, "bone": 2},
    "numTraining": 16,
    "file_ending": ".nii.gz",
    "name": "Dataset990_Phantom",
    "description": "Soft tissue and bone on generated CT, for the importer tests.",
    "licence": "CC-BY 4.0 (test data)",
}


def plans_json() -> dict[str, Any]:
    """A 3d_fullres plans file as nnU-Net v2 writes it, for a tiny PlainConvUNet."""
    return {
        "dataset_name": "Dataset990_Phantom",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 0.7, 0.7],
        "original_median_shape_after_transp": [40, 512, 512],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": NNUNET_PATCH,
                "median_image_size_in_voxels": [40, 240, 240],
                "spacing": [2.5, 1.5, 1.5],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": ARCH_KWARGS,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {**CT_PROPERTIES, "max": 1500.0, "median": 50.0, "min": -1000.0}
        },
    }


@cache
def _nnunet_trained() -> dict[str, torch.Tensor]:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kwargs = dict(ARCH_KWARGS)
    kwargs |= {"conv_op": nn.Conv3d, "nonlin": nn.LeakyReLU, "norm_op": None}
    network = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=False, **kwargs)
    return train(network, ct_normalization)


def nnunet_weights(fold: int) -> dict[str, torch.Tensor]:
    """A PlainConvUNet per fold: the trained one, perturbed by 2% per fold after the first."""
    generator = torch.Generator().manual_seed(fold)
    return {
        key: value + 0.02 * fold * value.std() * torch.randn(value.shape, generator=generator)
        if value.is_floating_point() and value.numel() > 1
        else value
        for key, value in _nnunet_trained().items()
    }


def write_nnunet_result(
    results: Path,
    folds: tuple[int, ...] = (0, 1),
    plans: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
) -> Path:
    """``Dataset990_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres`` under ``results``."""
    folder = results / "Dataset990_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    plans = plans_json() if plans is None else plans
    dataset = copy.deepcopy(DATASET_JSON if dataset is None else dataset)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        checkpoint = {
            "network_weights": nnunet_weights(fold),
            "optimizer_state": {},
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": fold,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "logging": {"train_losses": [np.float64(0.5), np.float64(0.25)]},
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


class FourierNet(nn.Module):
    """A network the ONNX exporter refuses (FFT has no opset-17 symbolic)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.fft.ifftn(torch.fft.fftn(x)).real)
