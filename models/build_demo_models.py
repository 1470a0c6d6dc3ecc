"""Build the demonstration CT package from scratch; hold what both demo builds share.

    python models/build_demo_models.py       # writes models/demo-ct-bone
    python models/build_demo_classifier.py   # writes models/demo-cr-classifier

Both builds learn from images generated here (fixed seeds, no download), whose inputs
go through the node's own preprocessing (`inference.preprocessing`), so that what a
model sees in training is exactly what it sees in the node. Both have the same shape:
``build(out, ...)`` returns the package folder it wrote, ``main`` takes ``--out`` and
``--scale``. This module holds what they share: the synthetic CT phantoms and
radiographs, and both packages' specs (``CT_TOML``, ``CR_TOML``).

* ``demo-ct-bone`` (this script): a small 2D U-Net that segments high-attenuation
  structures (HU >= 300, i.e. bone and calcification) on CT slices of any size,
  fitted to 256 x 256 with a fixed HU window. Phantoms hold air, fat, soft tissue,
  lungs, cortical rings with marrow, vertebra-like discs and blobs just either side of
  the threshold, with noise and partial-volume blur.
* ``demo-cr-classifier`` (``build_demo_classifier.py``): fine-tuned through the
  fine-tuning path from a pretrained backbone on radiographs drawn by `radiograph`,
  to tell whether one holds a nodule (small dense disc) and/or a mass (large dense
  disc), with class activation maps.

Each package gets ``model.toml``, ``model.onnx`` (runs with ONNX Runtime alone) and
``model.pt2`` (a ``torch.export`` program, for the PyTorch backend). They are
demonstration models, not for clinical use, and their ``model.toml`` says so.
PyTorch is needed to build them, not to use the packages.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.preprocessing.intensity import normalize
from inference.preprocessing.resize import plan_fit, to_model
from inference.spec import IntensityMethod, IntensitySpec, ResizeMode

logger = logging.getLogger("build_demo_models")

Array = npt.NDArray[np.float32]
HERE = Path(__file__).resolve().parent

BONE_HU = 300.0
CT_SIZE = (256, 256)
CT_WINDOW = IntensitySpec(method=IntensityMethod.WINDOW, center=500.0, width=3000.0)
CR_SIZE = (128, 128)
CR_INTENSITY = IntensitySpec(
    method=IntensityMethod.PERCENTILE, low_percentile=0.5, high_percentile=99.5
)
CR_LABELS = ("nodule", "mass")
NOT_CLINICAL = "Demonstration model, not for clinical use."


# --------------------------------------------------------------------------- phantoms


def _grid(rows: int, cols: int) -> tuple[Array, Array]:
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    return r, c


def _ellipse(
    r: Array, c: Array, centre: tuple[float, float], axes: tuple[float, float], angle: float
) -> Array:
    """Signed radial coordinate: < 1 inside the ellipse."""
    dr, dc = r - centre[0], c - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dr * cos + dc * sin, -dr * sin + dc * cos
    return np.asarray(np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2), dtype=np.float32)


def _box_blur(image: Array, radius: int) -> Array:
    if radius < 1:
        return image
    kernel = np.ones(2 * radius + 1, dtype=np.float32) / (2 * radius + 1)
    out = np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="same"), 0, image)
    return np.asarray(
        np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="same"), 1, out), dtype=np.float32
    )


def ct_phantom(rng: np.random.Generator, rows: int, cols: int) -> Array:
    """A synthetic axial CT slice in HU."""
    r, c = _grid(rows, cols)
    size = min(rows, cols)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    centre = (rows / 2 + rng.normal(0, size * 0.03), cols / 2 + rng.normal(0, size * 0.03))
    body_axes = (size * rng.uniform(0.28, 0.42), size * rng.uniform(0.36, 0.48))
    body = _ellipse(r, c, centre, body_axes, rng.uniform(-0.2, 0.2))
    hu[body < 1.0] = rng.normal(-100, 15)  # fat rim
    hu[body < 0.9] = rng.normal(45, 10)  # soft tissue
    if rng.random() < 0.5:  # lungs
        for side in (-1, 1):
            lung_centre = (centre[0] - body_axes[0] * 0.1, centre[1] + side * body_axes[1] * 0.45)
            lung = _ellipse(
                r, c, lung_centre, (body_axes[0] * 0.6, body_axes[1] * 0.3), rng.uniform(-0.3, 0.3)
            )
            hu[lung < 1.0] = rng.normal(-850, 30)
    for _ in range(rng.integers(2, 7)):  # soft-tissue organs and vessels, some contrast enhanced
        where = (rng.uniform(0.25, 0.75) * rows, rng.uniform(0.25, 0.75) * cols)
        axes = (size * rng.uniform(0.02, 0.12), size * rng.uniform(0.02, 0.12))
        organ = _ellipse(r, c, where, axes, rng.uniform(0, np.pi))
        hu[(organ < 1.0) & (body < 0.9)] = rng.uniform(-50, 280)
    for _ in range(rng.integers(2, 8)):  # bones: cortical ring with marrow
        axes = (size * rng.uniform(0.015, 0.09), size * rng.uniform(0.015, 0.09))
        bone = _ellipse(
            r,
            c,
            (rng.uniform(0.2, 0.8) * rows, rng.uniform(0.2, 0.8) * cols),
            axes,
            rng.uniform(0, np.pi),
        )
        cortex = rng.uniform(0.55, 0.9)
        hu[bone < 1.0] = rng.uniform(500, 1900)
        hu[bone < cortex] = rng.uniform(80, 450)
    for _ in range(rng.integers(0, 12)):  # small dense dots and blobs either side of the threshold
        where = (rng.uniform(0.1, 0.9) * rows, rng.uniform(0.1, 0.9) * cols)
        axes = (size * rng.uniform(0.004, 0.03), size * rng.uniform(0.004, 0.03))
        blob = _ellipse(r, c, where, axes, rng.uniform(0, np.pi))
        hu[blob < 1.0] = rng.uniform(150, 1200) if rng.random() < 0.6 else rng.uniform(200, 400)
    hu = _box_blur(hu, int(rng.integers(0, 2)))
    hu += rng.normal(0, rng.uniform(3, 40), size=hu.shape).astype(np.float32)
    if rng.random() < 0.3:  # outside the reconstruction circle
        fov = _ellipse(r, c, (rows / 2, cols / 2), (rows / 2, cols / 2), 0.0)
        hu[fov > 1.0] = rng.choice([-2000.0, -3024.0, -1024.0])
    return hu


def radiograph(
    rng: np.random.Generator, rows: int, cols: int, nodule: bool, mass: bool
) -> tuple[Array, list[tuple[str, float, float, float]]]:
    """A synthetic frontal chest radiograph (stored values 0-4095) and its lesions.

    Returns the image and (label, row, column, radius) for each lesion drawn.
    """
    r, c = _grid(rows, cols)
    image = np.full((rows, cols), 300.0, dtype=np.float32)
    body = _ellipse(r, c, (rows * 0.55, cols / 2), (rows * 0.55, cols * 0.47), 0.0)
    image[body < 1.0] = rng.uniform(2200, 2800)
    lungs = []
    for side in (-1, 1):
        centre = (rows * rng.uniform(0.42, 0.5), cols / 2 + side * cols * rng.uniform(0.18, 0.22))
        axes = (rows * rng.uniform(0.28, 0.34), cols * rng.uniform(0.13, 0.17))
        lung = _ellipse(r, c, centre, axes, side * rng.uniform(0.0, 0.15))
        image[lung < 1.0] = rng.uniform(900, 1300)
        lungs.append((centre, axes))
    rib_period = rows * rng.uniform(0.07, 0.1)
    ribs = np.sin((r + 0.25 * np.abs(c - cols / 2)) * 2 * np.pi / rib_period) > 0.6
    image[ribs & (image < 1500)] += rng.uniform(120, 220)
    lesions: list[tuple[str, float, float, float]] = []
    size = min(rows, cols)
    for label, wanted, radius_range in (
        ("nodule", nodule, (0.03, 0.05)),
        ("mass", mass, (0.10, 0.14)),
    ):
        if not wanted:
            continue
        (lr, lc), (ar, ac) = lungs[int(rng.integers(0, 2))]
        radius = size * rng.uniform(*radius_range)
        reach = max(0.0, min(ar, ac) - radius * 0.5)
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0, 1) * reach
        row, col = lr + distance * np.sin(angle), lc + distance * np.cos(angle) * (ac / ar)
        profile = np.clip(1.0 - _ellipse(r, c, (row, col), (radius, radius), 0.0) ** 4, 0.0, 1.0)
        image += profile * rng.uniform(500, 900)
        lesions.append((label, float(row), float(col), float(radius)))
    image = _box_blur(image, int(rng.integers(1, 3)))
    image += np.linspace(0, rng.uniform(-300, 300), cols, dtype=np.float32)[np.newaxis]
    image += rng.normal(0, rng.uniform(10, 50), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 4095), lesions


# --------------------------------------------------------------------------- datasets


def ct_sample(rng: np.random.Generator) -> tuple[Array, Array]:
    """One training pair at the model grid: window-normalised input, soft bone target."""
    rows, cols = (int(v) for v in rng.integers(128, 513, size=2))
    hu = ct_phantom(rng, rows, cols)
    fit = plan_fit((rows, cols), CT_SIZE, ResizeMode.STRETCH)
    image = to_model(normalize(hu[..., np.newaxis], CT_WINDOW), fit)[..., 0]
    target = to_model((hu >= BONE_HU).astype(np.float32), fit)
    return image, target


def make_dataset(
    sample: Callable[[np.random.Generator], tuple[Array, Array]], count: int, seed: int
) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    pairs = [sample(rng) for _ in range(count)]
    return np.stack([p[0] for p in pairs])[:, np.newaxis], np.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------- networks


def _bone_unet() -> Any:
    """Two-level U-Net, 12/24/48 channels: small, fully convolutional."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    class BoneUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Sequential(block(1, 12), block(12, 12))
            self.enc2 = nn.Sequential(nn.MaxPool2d(2), block(12, 24), block(24, 24))
            self.mid = nn.Sequential(nn.MaxPool2d(2), block(24, 48), block(48, 48))
            self.up2 = nn.ConvTranspose2d(48, 24, 2, stride=2)
            self.dec2 = nn.Sequential(block(48, 24))
            self.up1 = nn.ConvTranspose2d(24, 12, 2, stride=2)
            self.dec1 = nn.Sequential(block(24, 12))
            self.head = nn.Conv2d(12 + 1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            m = self.mid(e2)
            d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
            return self.head(torch.cat([d1, x], dim=1))

    return BoneUNet()


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Training:
    steps: int
    batch: int
    lr: float
    crop: int  # random square crops for the fully convolutional model


def train(
    model: Any,
    inputs: Array,
    targets: Array,
    plan: Training,
    loss_fn: Callable[..., Any],
    seed: int,
) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=plan.lr, total_steps=plan.steps
    )
    model.train()
    started = time.monotonic()
    for step in range(plan.steps):
        index = torch.randint(0, len(x_all), (plan.batch,), generator=generator)
        x, y = x_all[index], y_all[index]
        top, left = (
            int(v) for v in torch.randint(0, x.shape[-1] - plan.crop + 1, (2,), generator=generator)
        )
        x = x[..., top : top + plan.crop, left : left + plan.crop]
        y = y[..., top : top + plan.crop, left : left + plan.crop]
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == plan.steps - 1:
            logger.info(
                "step %d/%d loss %.4f (%.0f s)",
                step,
                plan.steps,
                float(loss.detach()),
                time.monotonic() - started,
            )
    model.eval()


# --------------------------------------------------------------------------- packaging


def _export(
    model: Any, example: Any, folder: Path, input_name: str, output_names: list[str]
) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "model.pt2"))
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(folder / "model.onnx"),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *output_names]},
            opset_version=17,
            dynamo=False,
        )


CT_DESCRIPTION = (
    f"Segments high-attenuation structures (bone, calcification: HU >= {BONE_HU:.0f}) "
    f"on CT slices. {NOT_CLINICAL}"
)
CT_USE = (
    f"{NOT_CLINICAL} Shows the node end to end (CT in, SEG and SR out); "
    "trained on synthetic phantoms only."
)
CR_DESCRIPTION = (
    "Flags a dense round opacity on a frontal radiograph: small (nodule) or large (mass), "
    f"with a class activation map. {NOT_CLINICAL}"
)
CR_USE = (
    f"{NOT_CLINICAL} Shows classification with CAM heatmaps end to end; "
    "trained on synthetic radiographs only."
)

CT_TOML = f"""
# {NOT_CLINICAL} Built by models/build_demo_models.py from synthetic phantoms.
[model]
name = "demo-ct-bone"
version = "1.0.0"
task = "segmentation"
description = "{CT_DESCRIPTION}"
intended_use = "{CT_USE}"
not_for_clinical_use = true

[input]
name = "image"
modalities = ["CT"]
dimensions = 2
size = [{CT_SIZE[0]}, {CT_SIZE[1]}]
channels = 1
resize = "stretch"

[input.intensity]
method = "window"
center = {CT_WINDOW.center}
width = {CT_WINDOW.width}

[output]
name = "logits"
activation = "sigmoid"

[[output.labels]]
name = "high-attenuation structure"
threshold = 0.5
finding = {{ value = "272673000", scheme = "SCT", meaning = "Bone structure" }}
category = {{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }}

[runtime]
max_batch = 8
precision = "fp16"
"""

CR_TOML = f"""
# {NOT_CLINICAL} Built by models/build_demo_classifier.py from synthetic radiographs.
[model]
name = "demo-cr-classifier"
version = "1.0.0"
task = "classification"
description = "{CR_DESCRIPTION}"
intended_use = "{CR_USE}"
not_for_clinical_use = true

[input]
name = "image"
modalities = ["CR", "DX"]
dimensions = 2
size = [{CR_SIZE[0]}, {CR_SIZE[1]}]
channels = 1
resize = "letterbox"

[input.intensity]
method = "percentile"
low_percentile = {CR_INTENSITY.low_percentile}
high_percentile = {CR_INTENSITY.high_percentile}

[output]
name = "logits"
activation = "sigmoid"

[output.cam]
feature_output = "features"
weight = "head.weight"

[[output.labels]]
name = "nodule"
threshold = 0.5
finding = {{ value = "27925004", scheme = "SCT", meaning = "Nodule" }}
category = {{ value = "404684003", scheme = "SCT", meaning = "Clinical finding" }}

[[output.labels]]
name = "mass"
threshold = 0.5
finding = {{ value = "4147007", scheme = "SCT", meaning = "Mass" }}
category = {{ value = "404684003", scheme = "SCT", meaning = "Clinical finding" }}

[runtime]
max_batch = 16
precision = "fp16"
"""


def build(out: Path, scale: float = 1.0) -> Path:
    """Generate phantoms, train the U-Net, export the package; return its folder."""
    import torch

    torch.manual_seed(1)
    inputs, targets = make_dataset(ct_sample, max(16, int(400 * scale)), seed=11)
    model = _bone_unet()
    bce = torch.nn.BCEWithLogitsLoss()
    train(
        model,
        inputs,
        targets[:, np.newaxis],
        Training(int(600 * scale), 12, 1e-2, 64),
        bce,
        seed=12,
    )
    folder = out / "demo-ct-bone"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _export(model, torch.from_numpy(inputs[:2]), folder, "image", ["logits"])
    (folder / "model.toml").write_text(CT_TOML.lstrip(), encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and build the package."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the package into")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of data and steps (tests: small)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"wrote {build(args.out, args.scale)}")


if __name__ == "__main__":
    main()
