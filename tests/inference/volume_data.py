"""Real CT volumes and small 3D networks for the windowed-inference tests.

A volume is pydicom's real CT slice (``CT_small.dcm``, 128 x 128, or the 512 x 512
``693_UNCI.dcm``) repeated along the slice normal, each copy scaled about the
centre so that the anatomy swells and shrinks from slice to slice: every label
boundary then runs through all three axes. The stack can be rotated (oblique), flipped,
tilted (sheared) and spaced unevenly.

The network is written twice from one set of weights: as ONNX for the node and as
a torch module for MONAI and nnU-Net. A 3x3x3 mean filter (zero padded, so that a
window's border sees its edge) feeds a 1x1x1 layer whose logits grow with intensity:
background below about -200 HU, "tissue" up to about 440 HU, "bone" above, on a
[-1000, 1000] HU to [0, 1] scale.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from scipy import ndimage

from tests.orchestration.studies import pydicom_file

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
LABELS = ("tissue", "bone")
HEAD_WEIGHTS = np.asarray([0.0, 30.0, 80.0], dtype=np.float32)
HEAD_BIAS = np.asarray([0.0, -12.0, -48.0], dtype=np.float32)


def oblique(degrees: float) -> tuple[float, ...]:
    """Axial orientation rotated about the patient's S axis, then tipped about L."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    row = np.asarray([np.cos(a), np.sin(a), 0.0])
    column = np.asarray([-np.sin(a), np.cos(a), 0.0])
    tip = np.asarray([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return (*(tip @ row).tolist(), *(tip @ column).tolist())


def real_ct_stack(
    slices: int,
    *,
    template: str = "CT_small.dcm",
    step_mm: float = 2.0,
    orientation: Sequence[float] = AXIAL,
    tilt_mm: float = 0.0,
    steps_mm: Sequence[float] | None = None,
    shuffle: bool = True,
) -> list[Dataset]:
    """A CT stack made of one real slice, scaled per slice (see the module notes).

    Parameters
    ----------
    slices : int
        Number of slices.
    template : str
        The pydicom test file to build from.
    step_mm : float
        Distance between slices along the normal.
    orientation : sequence of float
        Image Orientation (Patient) of every slice.
    tilt_mm : float
        Shift per slice along the column direction (gantry tilt: a sheared stack).
    steps_mm : sequence of float, optional
        Explicit distances between consecutive slices (uneven stacks).
    shuffle : bool
        Return the instances out of order, as an archive sends them.
    """
    source = dcmread(pydicom_file(template))
    stored = source.pixel_array.astype(np.float32)
    air = float(stored.min())
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    column_dir = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row_dir, column_dir)
    distances = (
        np.concatenate([[0.0], np.cumsum(steps_mm)]) if steps_mm else (np.arange(slices) * step_mm)
    )
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    origin = np.asarray([-40.0, -30.0, 12.0])
    centre = (np.asarray(stored.shape, dtype=np.float64) - 1) / 2
    datasets = []
    for k in range(len(distances)):
        scale = 0.6 + 0.4 * np.sin(np.pi * (k + 0.5) / len(distances))
        zoomed = ndimage.affine_transform(
            stored, np.full(2, 1 / scale), offset=centre - centre / scale, order=1, cval=air
        )
        ds: Dataset = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.SeriesNumber = 7
        ds.Modality = "CT"
        position = origin + distances[k] * normal + k * tilt_mm * column_dir
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
        ds.SliceThickness = round(float(step_mm), 4)
        ds.PixelData = np.round(zoomed).astype(source.pixel_array.dtype).tobytes()
        ds.pop("SliceLocation", None)
        datasets.append(ds)
    if shuffle:
        order = np.random.default_rng(7).permutation(len(datasets))
        datasets = [datasets[i] for i in order]
    return datasets


def save_stack(datasets: Sequence[Dataset], folder: Path) -> Path:
    """Write a stack as files (for MONAI's and nnU-Net's readers)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, ds in enumerate(datasets):
        ds.save_as(folder / f"slice{index:04d}.dcm", enforce_file_format=True)
    return folder


def head(seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The 1x1x1 layer's weights and bias; a seed > 0 perturbs them (ensemble members)."""
    rng = np.random.default_rng(seed)
    jitter = (rng.normal(0.0, 0.1, 3) if seed else np.zeros(3)).astype(np.float32)
    return HEAD_WEIGHTS * (1 + jitter), HEAD_BIAS * (1 + jitter)


def onnx_network(path: Path, seed: int = 0, patch: Sequence[int] | None = None) -> Path:
    """Write the network as ONNX: input ``image`` (N, 1, ...), output ``logits`` (N, 3, ...)."""
    weights, bias = head(seed)
    spatial: list[int | str] = list(patch) if patch else ["a0", "a1", "a2"]
    mean = numpy_helper.from_array(np.full((1, 1, 3, 3, 3), 1 / 27, np.float32), "mean")
    mean_bias = numpy_helper.from_array(np.zeros(1, np.float32), "mean_bias")
    head_w = numpy_helper.from_array(weights.reshape(3, 1, 1, 1, 1), "head")
    head_b = numpy_helper.from_array(bias, "head_bias")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "mean", "mean_bias"], ["smooth"], pads=[1] * 6),
            helper.make_node("Conv", ["smooth", "head", "head_bias"], ["logits"]),
        ],
        "ct3d",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, *spatial])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, *spatial])],
        [mean, mean_bias, head_w, head_b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def torch_network(seed: int = 0):  # type: ignore[no-untyped-def]
    """The same network as a torch module (for MONAI's and nnU-Net's own inference)."""
    import torch

    weights, bias = head(seed)
    smooth = torch.nn.Conv3d(1, 1, 3, padding=1)
    layer = torch.nn.Conv3d(1, 3, 1)
    with torch.no_grad():
        smooth.weight.fill_(1 / 27)
        smooth.bias.zero_()
        layer.weight.copy_(torch.from_numpy(weights.reshape(3, 1, 1, 1, 1)))
        layer.bias.copy_(torch.from_numpy(bias))
    return torch.nn.Sequential(smooth, layer).eval()


def monai_segment(
    folder: Path,
    network: Any,
    spacing: Sequence[float],
    patch: Sequence[int],
    *,
    batch: int = 2,
    overlap: float = 0.25,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """MONAI's own pipeline, as a bundle's inference config chains it, on a DICOM folder.

    ``LoadImaged(PydicomReader)``, ``Orientationd(RAS)``, ``Spacingd``,
    ``ScaleIntensityRanged(-1000..1000 -> 0..1, clip)``, a Gaussian
    ``SlidingWindowInferer``, then ``Activationsd(softmax)``, ``Invertd`` and
    ``AsDiscreted(argmax)``. Returns the label map on MONAI's array grid and its
    RAS affine.
    """
    import torch
    from monai import transforms as t
    from monai.inferers import SlidingWindowInferer

    pre = t.Compose(
        [
            t.LoadImaged("image", reader="PydicomReader"),
            t.EnsureChannelFirstd("image"),
            t.Orientationd("image", axcodes="RAS"),
            t.Spacingd("image", pixdim=tuple(spacing), mode="bilinear"),
            t.ScaleIntensityRanged("image", a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True),
        ]
    )
    data = pre({"image": str(folder)})
    inferer = SlidingWindowInferer(
        roi_size=tuple(patch), sw_batch_size=batch, overlap=overlap, mode="gaussian"
    )
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    post = t.Compose(
        [
            t.Activationsd("pred", softmax=True),
            t.Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
            t.AsDiscreted("pred", argmax=True),
        ]
    )
    data = post(data)
    labels = data["pred"][0].numpy().astype(np.uint8)
    return labels, np.asarray(data["pred"].affine, dtype=np.float64)


def package_toml(
    *,
    geometry: str,
    window: str,
    intensity: str,
    networks: Sequence[str] = ("model.onnx",),
    patch: Sequence[int] = (32, 32, 16),
    max_batch: int = 4,
    interpolate: str = "probabilities",
) -> str:
    """A windowed 3D package's model.toml with the two labels of the test network."""
    labels = "".join(
        f"""
[[output.labels]]
name = "{name}"
finding = {{ value = "{code}", scheme = "SCT", meaning = "{meaning}" }}
category = {{ value = "123037004", scheme = "SCT", meaning = "Anatomical Structure" }}
"""
        for name, code, meaning in (
            ("tissue", "85756007", "Tissue"),
            ("bone", "272673000", "Bone"),
        )
    )
    return f"""
[model]
name = "test-ct3d"
version = "1"
task = "segmentation"
intended_use = "Tests. Not for clinical use."

[input]
name = "image"
modalities = ["CT"]
dimensions = 3
size = {list(patch)}

[input.geometry]
{geometry}

[input.window]
patch = {list(patch)}
{window}

[input.intensity]
{intensity}

[output]
name = "logits"
activation = "softmax"
interpolate = "{interpolate}"
{labels}
[runtime]
max_batch = {max_batch}
networks = {list(networks)}
""".replace("'", '"')


def write_package(folder: Path, toml_text: str, seeds: Sequence[int] = (0,)) -> Path:
    """A package folder with one ONNX network per seed (named as the TOML lists them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(toml_text)
    names = ["model.onnx"] if len(seeds) == 1 else [f"fold_{i}.onnx" for i in range(len(seeds))]
    for name, seed in zip(names, seeds, strict=True):
        onnx_network(folder / name, seed)
    return folder
