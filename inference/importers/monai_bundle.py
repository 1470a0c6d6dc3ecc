"""A MONAI bundle folder to a model package: config, metadata, labels, network, licence.

The bundle's ``configs/inference.json`` (or ``.yaml``) is resolved by MONAI's own
``ConfigParser`` (its ``@``/``$``/``%`` syntax is a small language, never re-parsed
here), with ``bundle_root`` set to the folder as ``monai.bundle run`` does. Each
transform is instantiated on its own so that an error can name its config id;
`inference.importers.monai_mapping` maps them onto the package keys. The network is
``network_def`` with ``models/model.pt``, or TorchScript ``models/model.ts``,
exported to ONNX and checked on random windows.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inference.importers.card import bundle_card
from inference.importers.errors import ImportModelError
from inference.importers.labels import coded_labels
from inference.importers.monai_mapping import (
    MappedPipeline,
    Step,
    map_inferer,
    map_postprocessing,
    map_preprocessing,
)
from inference.importers.onnx_export import export_network
from inference.importers.package_writer import ImportOptions, ImportResult, staged, write_spec
from inference.importers.sources import load_checkpoint, read_json, require, sha256
from inference.model_card_files import write_card
from inference.package import validate_package

logger = logging.getLogger(__name__)

METADATA = Path("configs/metadata.json")
CONFIGS = (Path("configs/inference.json"), Path("configs/inference.yaml"))
WEIGHTS = Path("models/model.pt")
TORCHSCRIPT = Path("models/model.ts")
NETWORK_FILE = "model.onnx"
OUTPUT_NAME = "logits"
SEP = "::"  # MONAI's config id separator


@contextmanager
def _quiet() -> Iterator[None]:
    """MONAI's own notices while instantiating a bundle (deprecated defaults, a missing
    GPU decoder) are not the user's to fix: logged at DEBUG, not raised or printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.debug("MONAI: %s: %s", warning.category.__name__, warning.message)


def _parser(bundle: Path) -> tuple[Any, Path, Path]:
    from monai.bundle import ConfigParser

    metadata = bundle / METADATA
    read_json(metadata)  # a clear error for a missing or broken file
    config = next((bundle / c for c in CONFIGS if (bundle / c).is_file()), None)
    if config is None:
        raise ImportModelError(bundle, "-", f"no {' or '.join(map(str, CONFIGS))}")
    parser = ConfigParser()
    try:
        parser.read_meta(str(metadata))
        parser.read_config(str(config))
    except ValueError as exc:
        raise ImportModelError(config, "-", f"MONAI cannot read it: {exc}") from exc
    parser["bundle_root"] = str(bundle)
    return parser, metadata, config


def _instantiate(parser: Any, key: str, config: Path) -> Any:
    try:
        with _quiet():
            return parser.get_parsed_content(key)
    except Exception as exc:  # MONAI surfaces the transform's own errors unchanged
        raise ImportModelError(config, key, f"MONAI cannot instantiate it: {exc}") from exc


def _steps(parser: Any, key: str, config: Path) -> list[Step]:
    """Each transform of a ``Compose`` with its config id, instantiated on its own."""
    raw = parser.get(key)
    if raw is None:
        raise ImportModelError(config, key, "missing")
    items = raw.get("transforms") if isinstance(raw, dict) else None
    if isinstance(items, list):
        ids = [f"{key}{SEP}transforms{SEP}{i}" for i in range(len(items))]
        return [(i, _instantiate(parser, i, config)) for i in ids]
    compose = _instantiate(parser, key, config)
    return [(f"{key}[{i}]", t) for i, t in enumerate(getattr(compose, "transforms", [compose]))]


def _network(parser: Any, bundle: Path, config: Path, allow_pickle: bool) -> tuple[Any, Path]:
    import torch

    weights, script = bundle / WEIGHTS, bundle / TORCHSCRIPT
    if weights.is_file() and parser.get("network_def") is not None:
        network = _instantiate(parser, "network_def", config)
        state = load_checkpoint(weights, allow_pickle)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # saved by a CheckpointSaver with save_dict {"model": ...}
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ImportModelError(
                weights, "network_def", f"the weights do not fit the network: {exc}"
            ) from exc
        return network.eval(), weights
    if script.is_file():
        try:
            with _quiet():
                return torch.jit.load(str(script), map_location="cpu").eval(), script
        except RuntimeError as exc:
            raise ImportModelError(script, "-", f"not a loadable TorchScript file: {exc}") from exc
    raise ImportModelError(
        bundle, "network_def", f"needs {WEIGHTS} with network_def in the config, or {TORCHSCRIPT}"
    )


def _label_names(
    meta: dict[str, Any], metadata: Path, pred_key: str, pipeline: MappedPipeline
) -> tuple[list[str], int]:
    """Label names in channel order and the network's channel count, from the metadata."""
    base = ("network_data_format", "outputs", pred_key)
    channels = int(require(meta, metadata, *base, "num_channels"))
    channel_def = require(meta, metadata, *base, "channel_def")
    key = ".".join((*base, "channel_def"))
    names = [str(channel_def.get(str(c), "")) for c in range(channels)]
    if len(channel_def) != channels or not all(names):
        raise ImportModelError(
            metadata, key, f"{dict(channel_def)} does not name channels 0..{channels - 1}"
        )
    if pipeline.activation == "softmax":
        if channels < 2:
            raise ImportModelError(metadata, key, "softmax needs background plus >= 1 label")
        return names[1:], channels
    return names, channels


def _modality(meta: dict[str, Any], image_key: str, override: str | None, metadata: Path) -> str:
    if override:
        return override.upper()
    value = meta.get("network_data_format", {}).get("inputs", {}).get(image_key, {}).get("modality")
    if not value:
        raise ImportModelError(
            metadata,
            f"network_data_format.inputs.{image_key}.modality",
            "missing: give the DICOM modality with --modality (e.g. CT)",
        )
    return str(value).upper()


def _license(bundle: Path, meta: dict[str, Any]) -> str | None:
    path = bundle / "LICENSE"
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    text = meta.get("license")
    return str(text) if text else None


def _io_keys(meta: dict[str, Any], metadata: Path) -> tuple[str, str]:
    inputs = require(meta, metadata, "network_data_format", "inputs")
    outputs = require(meta, metadata, "network_data_format", "outputs")
    if len(inputs) != 1 or len(outputs) < 1:
        raise ImportModelError(
            metadata,
            "network_data_format.inputs",
            f"{sorted(inputs)}: the node feeds one input image",
        )
    image_key, pred_key = next(iter(inputs)), next(iter(outputs))
    channels = int(inputs[image_key].get("num_channels", 1))
    if channels != 1:
        raise ImportModelError(
            metadata,
            f"network_data_format.inputs.{image_key}.num_channels",
            f"{channels}: the node feeds one series as one channel",
        )
    return image_key, pred_key


def import_monai_bundle(
    bundle_dir: Path | str, out: Path | str, options: ImportOptions | None = None
) -> ImportResult:
    """Turn a MONAI bundle folder into a model package the node runs.

    Parameters
    ----------
    bundle_dir : pathlib.Path or str
        The bundle: ``configs/metadata.json``, ``configs/inference.json`` (or
        ``.yaml``), ``models/model.pt`` or ``models/model.ts``, optionally ``LICENSE``.
    out : pathlib.Path or str
        The package folder to write.
    options : ImportOptions, optional
        Labels file, overrides (name default: the bundle folder's; version default:
        the metadata's), tolerance, pickle and overwrite permissions.

    Returns
    -------
    ImportResult

    Raises
    ------
    ImportModelError
        When a file is missing or broken, a transform, inferer or network has no
        equivalent in the node, or the labels do not match the output channels.
    FileExistsError
        When ``out`` exists and ``overwrite`` is false.
    """
    opts = options or ImportOptions()
    bundle, target = Path(bundle_dir), Path(out)
    parser, metadata, config = _parser(bundle)
    meta = read_json(metadata)
    image_key, pred_key = _io_keys(meta, metadata)
    input_modality = _modality(meta, image_key, opts.modality, metadata)
    pipeline = MappedPipeline()
    map_preprocessing(_steps(parser, "preprocessing", config), image_key, config, pipeline)
    map_inferer(_instantiate(parser, "inferer", config), "inferer", config, pipeline)
    map_postprocessing(_steps(parser, "postprocessing", config), pred_key, config, pipeline)
    names, channels = _label_names(meta, metadata, pred_key, pipeline)
    first_channel = 1 if pipeline.activation == "softmax" else 0
    labels = coded_labels(names, first_channel, opts.labels_file, pipeline.threshold)
    network, weights = _network(parser, bundle, config, opts.allow_pickle)
    bundle_version = str(meta.get("version", "")) or "0"
    info = {
        "name": opts.name or bundle.resolve().name,
        "version": opts.version or bundle_version,
        "task": "segmentation",
        "description": str(meta.get("description", "")),
        "intended_use": str(meta.get("intended_use") or meta.get("description") or "")
        or f"As stated by the authors of MONAI bundle {bundle.resolve().name}.",
    }
    spec = {
        "model": info,
        "input": {
            "name": image_key,
            "modalities": [input_modality],
            "dimensions": 3,
            "size": pipeline.window["patch"],
            "channels": 1,
            "geometry": pipeline.geometry,
            "window": pipeline.window,
            "intensity": pipeline.intensity,
        },
        "output": {
            "name": OUTPUT_NAME,
            "activation": pipeline.activation,
            "interpolate": pipeline.interpolate,
            "labels": list(labels.tables),
        },
        "runtime": {"max_batch": pipeline.window["batch"], "networks": [NETWORK_FILE]},
        "origin": {
            "kind": "monai-bundle",
            "name": str(meta.get("name") or bundle.resolve().name),
            "version": bundle_version,
            "source": f"{bundle.resolve()} ({config.name}, {weights.name} sha256 "
            f"{sha256(weights)[:16]})",
        },
    }
    licence = _license(bundle, meta)
    notes = list(pipeline.notes)
    if licence is None:
        notes.append("the bundle has no LICENSE file and no license in its metadata")
    with staged(target, opts.overwrite) as stage:
        check = export_network(
            network,
            stage / NETWORK_FILE,
            window=(1, *pipeline.window["patch"]),
            input_name=image_key,
            output_name=OUTPUT_NAME,
            source=weights,
            tolerance=opts.tolerance,
        )
        if check.output_channels != channels:
            raise ImportModelError(
                metadata,
                f"network_data_format.outputs.{pred_key}.num_channels",
                f"{channels}, but the network outputs {check.output_channels} channels",
            )
        header = f"Imported by `dicom-node import-model monai-bundle` from {bundle.resolve()}"
        write_spec(stage, spec, header, licence)
        write_card(stage, bundle_card(meta, spec))
    result = ImportResult(
        validate_package(target), {NETWORK_FILE: check.max_abs_diff}, labels.generic, tuple(notes)
    )
    logger.info("imported MONAI bundle %s as %s", bundle, target)
    return result
