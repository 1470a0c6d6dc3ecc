"""Training one fold: frozen-then-thawed encoder, warm-up and decay, early stopping,
mixed precision on a GPU, and a checkpoint after every epoch so that a killed run
resumes where it stopped and gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from inference.finetune.augment import augment_batch
from inference.finetune.config import FinetuneConfig
from inference.finetune.data import TrainingData
from inference.finetune.losses import DiceCELoss, FocalLoss
from inference.finetune.metrics import auc, dice
from inference.finetune.networks import build_network, head_parameters, set_frozen
from inference.finetune.schedule import lr_factor
from inference.finetune.splits import Split
from inference.spec import Task

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
RESULT = "result.npz"
DONE = "done.json"
PARITY_INPUTS = "parity_inputs.npy"
_PARITY_IMAGES = 8


@dataclass(frozen=True)
class FoldOutcome:
    """What one fold left: its best epoch (counted from 1, as printed everywhere) and
    validation predictions.

    ``scores`` is (validation cases, labels) for classification (the highest image
    probability of each case, as the node scores a series) and (validation images,
    H, W) predicted label maps for segmentation; ``images`` are the validation
    image indices, ``cases`` the validation case indices.
    """

    fold: int
    best_epoch: int
    best_metric: float
    epochs_run: int
    cases: npt.NDArray[np.int64]
    images: npt.NDArray[np.int64]
    scores: npt.NDArray[np.generic]


def image_indices(data: TrainingData, cases: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Indices of the images that belong to the given cases."""
    return np.flatnonzero(np.isin(data.case_of, cases)).astype(np.int64)


def predict(
    model: nn.Module, images: npt.NDArray[np.float32], device: torch.device, batch_size: int
) -> npt.NDArray[np.float32]:
    """Raw network output for images: logits (N, labels) or (N, labels + 1, H, W)."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).to(device)
            out = model(batch)
            logits = out[0] if isinstance(out, tuple) else out
            outputs.append(logits.float().cpu().numpy())
    return np.concatenate(outputs).astype(np.float32)


def case_scores(
    probabilities: npt.NDArray[np.float32],
    case_of: npt.NDArray[np.int64],
    cases: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """Per case, the highest probability over its images (how the node scores a series)."""
    return np.stack([probabilities[case_of == c].max(axis=0) for c in cases]).astype(np.float32)


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def validation_scores(
    model: nn.Module, data: TrainingData, split: Split, device: torch.device, batch_size: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.generic]]:
    """(validation image indices, case scores or predicted label maps)."""
    images = image_indices(data, split.validation)
    raw = predict(model, data.images[images], device, batch_size)
    if data.task is Task.CLASSIFICATION:
        return images, case_scores(_sigmoid(raw), data.case_of[images], split.validation)
    return images, raw.argmax(axis=1).astype(np.int64)


def validation_metric(
    data: TrainingData, split: Split, images: npt.NDArray[np.int64], scores: npt.NDArray[np.generic]
) -> float:
    """Mean AUC over labels (classification) or mean Dice (segmentation); NaN if undefined."""
    if data.task is Task.CLASSIFICATION:
        truth = np.asarray([data.cases[c].target for c in split.validation])
        values = [auc(truth[:, k], scores[:, k]) for k in range(len(data.labels))]
        defined = [v for v in values if not math.isnan(v)]
        return float(np.mean(defined)) if defined else float("nan")
    truth_maps = data.targets[images]
    values = [
        dice(truth_maps[i] == k + 1, scores[i] == k + 1)
        for i in range(len(images))
        for k in range(len(data.labels))
    ]
    return float(np.mean(values))


def _loss(config: FinetuneConfig) -> nn.Module:
    t = config.training
    if t.loss == "dice_ce":
        return DiceCELoss(dice_weight=t.dice_weight)
    if t.loss == "focal":
        return FocalLoss(gamma=t.focal_gamma, alpha=t.focal_alpha)
    return FocalLoss(gamma=0.0, alpha=None)  # plain binary cross-entropy


def _frozen_stages(config: FinetuneConfig, epoch: int) -> int:
    t = config.training
    if t.unfreeze_every == 0:
        return t.freeze_stages
    return max(0, t.freeze_stages - epoch // t.unfreeze_every)


class _State:
    """Everything a checkpoint holds besides the network and optimizer."""

    def __init__(self) -> None:
        self.epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0


def _save(path: Path, payload: dict[str, object]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)


def train_fold(
    config: FinetuneConfig,
    data: TrainingData,
    split: Split,
    fold_dir: Path,
    device: torch.device,
    progress: bool = True,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FoldOutcome:
    """Train (or resume, or reload) one fold and return its validation predictions.

    Parameters
    ----------
    config : FinetuneConfig
    data : TrainingData
    split : Split
        The fold's case indices.
    fold_dir : pathlib.Path
        Where the fold's checkpoint, best weights and results go; a finished fold
        is reloaded from there, an interrupted one resumed.
    device : torch.device
    progress : bool
        Show an epoch progress bar.
    on_epoch : callable, optional
        Called with (epoch, training loss, validation metric) after each epoch.

    Returns
    -------
    FoldOutcome

    Raises
    ------
    ValueError
        When the fold folder holds a checkpoint of a different configuration.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config.fingerprint()
    done = fold_dir / DONE
    if done.is_file():
        return _reload(done, split, fingerprint)
    t = config.training
    seed = t.seed * 1000 + split.fold
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_network(
        t.backbone,
        len(data.labels),
        config.spec.input.channels,
        config.weights_path,
        t.output_stride,
        t.pooling,
        t.encoder_depth,
    ).to(device)
    encoder, new = head_parameters(model)
    base_rates = (t.lr * t.encoder_lr_factor, t.lr)
    optimizer = torch.optim.AdamW(
        [{"params": encoder, "lr": base_rates[0]}, {"params": new, "lr": base_rates[1]}],
        weight_decay=t.weight_decay,
    )
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    loss_fn = _loss(config)
    state = _State()
    checkpoint = fold_dir / CHECKPOINT
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        if saved["fingerprint"] != fingerprint:
            raise ValueError(
                f"{checkpoint} was written with another configuration "
                f"({saved['fingerprint']} != {fingerprint}); use a new run folder"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state.__dict__.update(saved["state"])
        logger.info(
            "fold %d: resuming at epoch %d from %s", split.fold, state.epoch + 1, checkpoint
        )
    train_images = image_indices(data, split.train)
    augment = t.augment
    images = torch.from_numpy(data.images)
    targets = torch.from_numpy(data.targets)
    bar = tqdm(
        total=t.epochs,
        initial=state.epoch,
        desc=f"fold {split.fold}",
        unit="epoch",
        leave=False,
        disable=not progress,
    )
    while state.epoch < t.epochs and state.bad_epochs < t.patience:
        epoch = state.epoch
        factor = lr_factor(epoch, t.epochs, t.schedule, t.warmup_epochs, t.step_size, t.step_gamma)
        for group, base in zip(optimizer.param_groups, base_rates, strict=True):
            group["lr"] = base * factor
        model.train()
        set_frozen(model, _frozen_stages(config, epoch))
        order = train_images[torch.randperm(len(train_images), generator=generator).numpy()]
        losses = []
        for start in range(0, len(order), t.batch_size):
            index = torch.from_numpy(order[start : start + t.batch_size])
            if len(index) < 2:
                continue  # batch norm cannot train on one image
            x, y = images[index], targets[index]
            masks = y if data.task is Task.SEGMENTATION else None
            x, moved = augment_batch(x, augment, generator, masks)
            y = moved if moved is not None else y
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(x)
                logits = out[0] if isinstance(out, tuple) else out
                loss = loss_fn(logits, y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
        val_images, scores = validation_scores(model, data, split, device, t.batch_size)
        metric = validation_metric(data, split, val_images, scores)
        train_loss = float(np.mean(losses)) if losses else float("nan")
        score = metric if not math.isnan(metric) else -train_loss
        if score > state.best_metric + 1e-6:
            state.best_metric, state.best_epoch, state.bad_epochs = score, epoch, 0
            _save(fold_dir / BEST, {"model": model.state_dict(), "epoch": epoch})
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        _save(
            checkpoint,
            {
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "state": dict(state.__dict__),
            },
        )
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}", metric=f"{metric:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, train_loss, metric)
    bar.close()
    model.load_state_dict(
        torch.load(fold_dir / BEST, map_location=device, weights_only=True)["model"]
    )
    val_images, scores = validation_scores(model, data, split, device, t.batch_size)
    np.save(fold_dir / PARITY_INPUTS, data.images[val_images[:_PARITY_IMAGES]])
    np.savez_compressed(fold_dir / RESULT, cases=split.validation, images=val_images, scores=scores)
    summary = {
        "fingerprint": fingerprint,
        "fold": split.fold,
        "best_epoch": state.best_epoch + 1,
        "best_metric": state.best_metric,
        "epochs_run": state.epoch,
    }
    done.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return FoldOutcome(
        split.fold,
        state.best_epoch + 1,
        state.best_metric,
        state.epoch,
        split.validation,
        val_images,
        scores,
    )


def _reload(done: Path, split: Split, fingerprint: str) -> FoldOutcome:
    summary = json.loads(done.read_text(encoding="utf-8"))
    if summary["fingerprint"] != fingerprint:
        raise ValueError(f"{done} was written with another configuration; use a new run folder")
    saved = np.load(done.parent / RESULT)
    if not np.array_equal(saved["cases"], split.validation):
        raise ValueError(f"{done}: the fold's validation cases differ from this split")
    logger.info("fold %d already done (%s): reloaded", split.fold, done)
    return FoldOutcome(
        split.fold,
        summary["best_epoch"],
        summary["best_metric"],
        summary["epochs_run"],
        saved["cases"],
        saved["images"],
        saved["scores"],
    )
