"""An nnU-Net v2 result folder to a model package: plans, dataset, folds, ensemble.

nnU-Net's own classes read the plans (`PlansManager` resolves a configuration's
``inherits_from``; `LabelManager` the labels, regions and ignore label) and build
the network (`get_network_from_plans`, what its trainers call). The package says
what nnU-Net's predictor does: the source axis order (SimpleITK's slice, row,
column) with ``transpose_forward``, the configuration's spacing and patch, its
normalisation with the dataset's foreground intensity properties, windows spread
evenly at nnU-Net's default step of half a patch with Gaussian weights of sigma
1/8, each fold one ONNX file whose logits the node averages before the softmax,
logits (not probabilities) taken back to the source grid, and mirroring when asked
for.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from inference.importers.card import nnunet_card
from inference.importers.errors import ImportModelError
from inference.importers.labels import coded_labels
from inference.importers.onnx_export import export_network
from inference.importers.package_writer import ImportOptions, ImportResult, staged, write_spec
from inference.importers.sources import load_checkpoint, read_json, require, sha256
from inference.model_card_files import write_card
from inference.package import validate_package

logger = logging.getLogger(__name__)

PLANS, DATASET, CHECKPOINT = "plans.json", "dataset.json", "checkpoint_final.pth"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
TILE_STEP = 0.5  # nnU-Net's default tile_step_size: windows overlap by half a patch
SIGMA_SCALE = 0.125  # nnU-Net's Gaussian: sigma = patch / 8
WINDOW_BATCH = 2
_MODALITIES = {"CT": "CT", "MR": "MR", "MRI": "MR"}


def _trainer_dir(result: Path, configuration: str) -> Path:
    """The ``TRAINER__PLANS__CONFIGURATION`` folder: ``result`` itself or its one child."""
    if (result / PLANS).is_file():
        return result
    found = sorted(p.parent for p in result.glob(f"*__*__{configuration}/{PLANS}"))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise ImportModelError(
            result,
            "-",
            f"needs {PLANS} here or in exactly one TRAINER__PLANS__{configuration} "
            f"folder (found {what})",
        )
    return found[0]


def _configuration(plans: dict[str, Any], name: str, path: Path) -> Any:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # old plans format, converted
            config = manager.get_configuration(name)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ImportModelError(path, f"configurations.{name}", str(exc)) from exc
    if len(config.patch_size) != 3:
        raise ImportModelError(
            path, f"configurations.{name}.patch_size", f"{config.patch_size}: not a 3D model"
        )
    return manager, config


def _label_names(manager: Any, dataset: dict[str, Any], path: Path) -> list[str]:
    """Foreground label names in output-channel order (background is channel 0)."""
    labels = require(dataset, path, "labels")
    regions = any(isinstance(v, list | tuple) for v in labels.values())
    if regions or "regions_class_order" in dataset:
        raise ImportModelError(path, "labels", "region-based training (sigmoid regions)")
    try:
        ignore = manager.get_label_manager(dataset).ignore_label
        by_value = sorted((int(v), str(k)) for k, v in labels.items() if int(v) != ignore)
    except (AssertionError, TypeError, ValueError) as exc:
        raise ImportModelError(path, "labels", f"{labels}: {exc}") from exc
    if [v for v, _ in by_value] != list(range(len(by_value))) or len(by_value) < 2:
        raise ImportModelError(path, "labels", f"{labels}: values must be 0 (background), 1, 2 ...")
    return [name for _, name in by_value[1:]]


def _intensity(plans: dict[str, Any], config: Any, path: Path, name: str) -> dict[str, Any]:
    scheme = config.normalization_schemes[0]
    key = f"configurations.{name}.normalization_schemes"
    if scheme == "CTNormalization":
        props = require(plans, path, "foreground_intensity_properties_per_channel", "0")
        return {
            "method": "ct_normalization",
            "lower": float(props["percentile_00_5"]),
            "upper": float(props["percentile_99_5"]),
            "mean": float(props["mean"]),
            "std": float(props["std"]),
        }
    if scheme == "ZScoreNormalization" and not config.use_mask_for_norm[0]:
        return {"method": "normalize", "nonzero": False}
    raise ImportModelError(
        path, key, f"{scheme} (use_mask_for_norm {config.use_mask_for_norm[0]}) has no equivalent"
    )


def _modality(dataset: dict[str, Any], override: str | None, path: Path, scheme: str) -> str:
    if override:
        return override.upper()
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    name = str(channels.get("0", "")).upper()
    if name in _MODALITIES:
        return _MODALITIES[name]
    if scheme == "ct_normalization":
        return "CT"
    raise ImportModelError(
        path, "channel_names.0", f"{name!r} names no DICOM modality: give one with --modality"
    )


def _fold_network(
    folder: Path, fold: str, config: Any, labels: int, allow_pickle: bool
) -> tuple[Any, Path, Any]:
    """One fold's network with its weights, the checkpoint path and its mirroring axes."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    path = folder / f"fold_{fold}" / CHECKPOINT
    checkpoint = load_checkpoint(path, allow_pickle)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ImportModelError(path, "network_weights", "missing: not an nnU-Net checkpoint")
    try:
        network = get_network_from_plans(
            config.network_arch_class_name,
            config.network_arch_init_kwargs,
            config.network_arch_init_kwargs_req_import,
            1,
            labels + 1,
            allow_init=False,
            deep_supervision=False,
        )
        network.load_state_dict(checkpoint["network_weights"])
    except (ImportError, RuntimeError, TypeError, KeyError) as exc:
        raise ImportModelError(
            path,
            "network_weights",
            f"do not fit {config.network_arch_class_name} with {labels + 1} output channels "
            f"(background and the {labels} labels of dataset.json): {exc}",
        ) from exc
    return network.eval(), path, checkpoint.get("inference_allowed_mirroring_axes")


def import_nnunet(
    result_dir: Path | str,
    out: Path | str,
    *,
    configuration: str,
    folds: tuple[str, ...],
    mirror: bool = False,
    options: ImportOptions | None = None,
) -> ImportResult:
    """Turn an nnU-Net v2 result folder into a model package the node runs.

    Parameters
    ----------
    result_dir : pathlib.Path or str
        The ``TRAINER__PLANS__CONFIGURATION`` folder (``plans.json``,
        ``dataset.json``, ``fold_X/checkpoint_final.pth``), or the dataset's result
        folder holding exactly one of those for ``configuration``.
    out : pathlib.Path or str
        The package folder to write.
    configuration : str
        The plans configuration, e.g. ``"3d_fullres"``.
    folds : tuple of str
        The folds to ensemble (``"0"`` ... or ``"all"``).
    mirror : bool
        Carry nnU-Net's test-time mirroring (the checkpoint's allowed axes) into the
        package: up to 8x the windows, as ``nnUNetv2_predict`` does by default.
    options : ImportOptions, optional
        Labels file, overrides (name default: the dataset's and the configuration;
        version default: ``sha-`` and the start of the SHA-256 of the plans and
        checkpoints), tolerance, pickle and overwrite permissions.

    Returns
    -------
    ImportResult

    Raises
    ------
    ImportModelError
        When a file is missing or broken, the configuration is not a 3D one, the
        normalisation or labels have no equivalent, or a fold does not export.
    FileExistsError
        When ``out`` exists and ``overwrite`` is false.
    """
    if not folds:
        raise ValueError("folds: give at least one fold")
    opts = options or ImportOptions()
    folder, target = _trainer_dir(Path(result_dir), configuration), Path(out)
    plans_path, dataset_path = folder / PLANS, folder / DATASET
    plans, dataset = read_json(plans_path), read_json(dataset_path)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise ImportModelError(dataset_path, "channel_names", f"{channels}: the node feeds one")
    manager, config = _configuration(plans, configuration, plans_path)
    names = _label_names(manager, dataset, dataset_path)
    intensity = _intensity(plans, config, plans_path, configuration)
    input_modality = _modality(dataset, opts.modality, dataset_path, intensity["method"])
    labels = coded_labels(names, 1, opts.labels_file)
    networks = [_fold_network(folder, f, config, len(names), opts.allow_pickle) for f in folds]
    checkpoints = [path for _, path, _ in networks]
    digest = sha256(plans_path, *checkpoints)
    mirror_axes = list(networks[0][2] or ()) if mirror else []
    order = int(config.configuration.get("resampling_fn_data_kwargs", {}).get("order", 3))
    dataset_name = str(plans.get("dataset_name") or dataset.get("name") or folder.parent.name)
    patch = [int(v) for v in config.patch_size]
    spec: dict[str, Any] = {
        "model": {
            "name": opts.name or f"{dataset_name}-{configuration}",
            "version": opts.version or f"sha-{digest[:12]}",
            "task": "segmentation",
            "description": str(dataset.get("description", "")),
            "intended_use": str(dataset.get("description") or "")
            or f"As stated by the authors of nnU-Net dataset {dataset_name}.",
        },
        "input": {
            "name": INPUT_NAME,
            "modalities": [input_modality],
            "dimensions": 3,
            "size": patch,
            "channels": 1,
            "geometry": {
                "orientation": "source",
                "transpose": [int(v) for v in manager.transpose_forward],
                "spacing": [float(v) for v in config.spacing],
                "interpolation": min(order, 3),
            },
            "window": {
                "patch": patch,
                "overlap": TILE_STEP,
                "placement": "even",
                "blending": "gaussian",
                "sigma_scale": SIGMA_SCALE,
                "batch": WINDOW_BATCH,
                "padding": "constant",
                "padding_value": 0.0,
                "mirror_axes": [int(v) for v in mirror_axes],
            },
            "intensity": intensity,
        },
        "output": {
            "name": OUTPUT_NAME,
            "activation": "softmax",
            "interpolate": "logits",
            "labels": list(labels.tables),
        },
        "runtime": {
            "max_batch": WINDOW_BATCH,
            "networks": [f"fold_{f}.onnx" for f in folds],
        },
        "origin": {
            "kind": "nnunet",
            "name": dataset_name,
            "version": f"sha-{digest[:12]}",
            "source": f"{folder.resolve()} configuration {configuration} folds "
            f"{', '.join(folds)}; sha256 of plans and checkpoints {digest}",
        },
    }
    licence = dataset.get("licence") or dataset.get("license")
    notes = [] if licence else ["dataset.json names no licence; none copied into the package"]
    if mirror and not mirror_axes:
        notes.append("--mirror: the checkpoint allows no mirroring axes; none used")
    parity: dict[str, float] = {}
    with staged(target, opts.overwrite) as stage:
        for fold, (network, path, _) in zip(folds, networks, strict=True):
            onnx_name = f"fold_{fold}.onnx"
            check = export_network(
                network,
                stage / onnx_name,
                window=(1, *patch),
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                source=path,
                tolerance=opts.tolerance,
            )
            parity[onnx_name] = check.max_abs_diff
        header = f"Imported by `dicom-node import-model nnunet` from {folder.resolve()}"
        write_spec(stage, spec, header, str(licence) if licence else None)
        write_card(stage, nnunet_card(dataset, folder, folds, spec))
    logger.info("imported nnU-Net %s %s folds %s as %s", dataset_name, configuration, folds, target)
    return ImportResult(validate_package(target), parity, labels.generic, tuple(notes))
