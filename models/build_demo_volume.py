"""Build ``models/demo-ct-body3d``, the windowed 3D demonstration package, from scratch.

    python models/build_demo_volume.py      # about two minutes on two CPU cores

A small two-scale 3D CNN learns body (soft tissue and fat), lungs and bone on CT
phantoms this script generates (fixed seed, nothing downloaded), at the grid the
package declares: RAS orientation, 1.5 mm voxels, scale_range -1000..1000 HU to
[0, 1]. Phantoms are drawn directly on that grid (an ellipsoidal trunk with a fat
layer, two lungs, a spine and ribs, noise and partial-volume blur); the node
resamples real CT to the same grid before the network sees it. The network is fully
convolutional: it trains on 24^3 crops and runs on the package's 64^3 windows.

Not through ``inference.finetune``: fine-tuning is 2D (slices and radiographs); a 3D
path there would need its own data loading from DICOM volumes. This is a
demonstration model, not for clinical use, and its ``model.toml`` says so.
PyTorch is needed to run this script, not to use the package.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

logger = logging.getLogger("build_demo_volume")

HERE = Path(__file__).resolve().parent
NAME = "demo-ct-body3d"
SPACING_MM = 1.5
PATCH = 64
CROP = 24
LABELS = ("body", "lung", "bone")
NOT_CLINICAL = "Demonstration model, not for clinical use."
Array = npt.NDArray[np.float32]


def phantom(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[Array, Array]:
    """One trunk phantom on the network grid (RAS axes: x right, y anterior, z superior).

    Returns HU (float32) and labels (0 air, 1 body, 2 lung, 3 bone), shape (x, y, z).
    """
    x, y, z = (np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape)
    xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
    a, b = rng.uniform(0.30, 0.46) * shape[0], rng.uniform(0.22, 0.36) * shape[1]
    trunk = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
    inner = (xx / (a - 4)) ** 2 + (yy / (b - 4)) ** 2 <= 1.0
    labels = np.where(trunk, 1, 0).astype(np.int64)
    hu = np.where(trunk, np.where(inner, 40.0, -100.0), -1000.0)
    for side in (-1, 1):  # lungs, tapering toward the top
        cx, ry = side * a * 0.45, b * rng.uniform(0.5, 0.7)
        rx = a * rng.uniform(0.25, 0.35) * (1 - 0.3 * (zz / shape[2] + 0.5))
        lung = ((xx - cx) / rx) ** 2 + ((yy + b * 0.05) / ry) ** 2 <= 1.0
        lung &= inner
        labels[lung], hu[lung] = 2, rng.uniform(-880, -780)
    spine = (xx / 5.0) ** 2 + ((yy - b * 0.75) / 5.0) ** 2 <= 1.0
    ribs = np.abs(np.sqrt((xx / (a - 2)) ** 2 + (yy / (b - 2)) ** 2) - 0.93) < 0.04
    ribs &= (np.sin(zz / 2.5 + rng.uniform(0, 6)) > 0.3) & trunk
    bone = spine | ribs
    labels[bone], hu[bone] = 3, rng.uniform(500, 900)
    hu = ndimage.gaussian_filter(hu, 0.7) + rng.normal(0, 15, hu.shape)
    return hu.astype(np.float32), labels.astype(np.float32)


def _network() -> Any:
    """Two 3x3x3 layers at full resolution beside two at a quarter (context), joined.

    Plain convolutions, average pooling and trilinear upsampling: cheap to train on
    a CPU (PyTorch's dilated 3D convolutions have no fast CPU backward) and exported
    to ONNX as they are. Patches must be multiples of 4 voxels (64 is).
    """
    import torch

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            relu = torch.nn.ReLU()
            self.local = torch.nn.Sequential(
                torch.nn.Conv3d(1, 6, 3, padding=1), relu, torch.nn.Conv3d(6, 6, 3, padding=1), relu
            )
            self.context = torch.nn.Sequential(
                torch.nn.AvgPool3d(4),
                torch.nn.Conv3d(6, 8, 3, padding=1),
                relu,
                torch.nn.Conv3d(8, 8, 3, padding=1),
                relu,
                torch.nn.Upsample(scale_factor=4, mode="trilinear", align_corners=False),
            )
            self.head = torch.nn.Sequential(
                torch.nn.Conv3d(14, 8, 3, padding=1), relu, torch.nn.Conv3d(8, 1 + len(LABELS), 1)
            )

        def forward(self, image: Any) -> Any:
            local = self.local(image)
            return self.head(torch.cat([local, self.context(local)], dim=1))

    return Net()


def train(steps: int, seed: int) -> Any:
    """Train on random crops of fresh phantoms; returns the network in eval mode."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = _network()
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    weights = torch.tensor([0.5, 1.0, 1.0, 3.0])
    volumes = [phantom(rng, (96, 80, 48)) for _ in range(12)]
    started = time.perf_counter()
    for step in range(steps):
        batch, target = [], []
        for _ in range(2):
            hu, labels = volumes[rng.integers(len(volumes))]
            corner = [int(rng.integers(0, n - CROP + 1)) for n in hu.shape]
            window = tuple(slice(c, c + CROP) for c in corner)
            batch.append(np.clip((hu[window] + 1000.0) / 2000.0, 0.0, 1.0))
            target.append(labels[window])
        inputs = torch.from_numpy(np.stack(batch)[:, None])
        loss = torch.nn.functional.cross_entropy(
            network(inputs), torch.from_numpy(np.stack(target)).long(), weight=weights
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info(
                "step %d loss %.4f (%.0f s)", step, loss.item(), time.perf_counter() - started
            )
    return network.eval()


def check(network: Any, seed: int) -> dict[str, float]:
    """Dice per label on a held-out phantom, whole volume at once."""
    import torch

    hu, labels = phantom(np.random.default_rng(seed + 1000), (96, 80, 48))
    with torch.no_grad():
        inputs = torch.from_numpy(np.clip((hu + 1000.0) / 2000.0, 0.0, 1.0)[None, None])
        found = network(inputs)[0].argmax(0).numpy()
    return {
        name: float(
            2 * np.sum((found == k) & (labels == k)) / (np.sum(found == k) + np.sum(labels == k))
        )
        for k, name in enumerate(LABELS, start=1)
    }


def export(network: Any, folder: Path) -> None:
    import torch

    example = torch.zeros(1, 1, PATCH, PATCH, PATCH)
    with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network,
            (example,),
            str(folder / "model.onnx"),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


MODEL_TOML = f"""
# {NOT_CLINICAL} Built by models/build_demo_volume.py from synthetic phantoms.
[model]
name = "{NAME}"
version = "1.0.0"
task = "segmentation"
description = "Body, lungs and bone on CT volumes at 1.5 mm, 64^3 windows. {NOT_CLINICAL}"
intended_use = "{NOT_CLINICAL} Shows the node's 3D path; trained on synthetic phantoms only."
not_for_clinical_use = true

[input]
name = "image"
modalities = ["CT"]
dimensions = 3
size = [{PATCH}, {PATCH}, {PATCH}]
channels = 1
min_slices = 4

[input.geometry]
orientation = "RAS"
spacing = [{SPACING_MM}, {SPACING_MM}, {SPACING_MM}]
interpolation = 1
max_slice_step_deviation = 0.1
resample_uneven = true

[input.window]
patch = [{PATCH}, {PATCH}, {PATCH}]
overlap = 0.25
blending = "gaussian"
sigma_scale = 0.125
batch = 2
padding = "constant"
padding_value = 0.0

[input.intensity]
method = "scale_range"
a_min = -1000.0
a_max = 1000.0
b_min = 0.0
b_max = 1.0
clip = true

[output]
name = "logits"
activation = "softmax"

[[output.labels]]
name = "body"
finding = {{ value = "38266002", scheme = "SCT", meaning = "Entire body as a whole" }}
category = {{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }}

[[output.labels]]
name = "lung"
finding = {{ value = "39607008", scheme = "SCT", meaning = "Lung" }}
category = {{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }}

[[output.labels]]
name = "bone"
finding = {{ value = "272673000", scheme = "SCT", meaning = "Bone structure" }}
category = {{ value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }}

[runtime]
max_batch = 2
precision = "fp16"
"""


def main() -> None:
    """Train, check and write the package."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", type=Path, default=HERE / NAME)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    network = train(args.steps, args.seed)
    logger.info("held-out Dice %s", {k: round(v, 3) for k, v in check(network, args.seed).items()})
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    export(network, args.out)
    (args.out / "model.toml").write_text(MODEL_TOML.lstrip(), encoding="utf-8")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
