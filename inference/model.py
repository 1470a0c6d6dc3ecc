"""A loaded model: `load_model` checks the package and starts a backend; `Model.predict`
turns the instances of one series into a Prediction.

2D packages run frame by frame; a package with ``[input.window]`` runs as a real 3D
model (`inference.volumes`: its own spacing and orientation, sliding windows over
every network of an ensemble, results on the source slices); the old 3D packages
without it take the whole stack fitted to ``input.size``.

What happens to a series the model cannot fully take:

* nothing in it can run (wrong modality, no pixel data, no stack the model accepts,
  every frame undecodable): `predict` raises `UnsupportedSeriesError` with the
  reasons, and the caller marks the job skipped;
* some of it can run: `predict` returns a Prediction for what ran, and its
  ``skipped`` field holds one reason per instance, frame or stack left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from inference.backends.base import Array, Backend, BackendOptions
from inference.backends.selection import create_backend
from inference.devices import SHARED_GATE, GpuGate, resolve_device
from inference.errors import BackendUnavailableError, UnsupportedSeriesError
from inference.input_statistics import InputSample
from inference.package import ModelPackage, validate_package
from inference.postprocessing.classification import build_classification
from inference.postprocessing.detection import build_detection
from inference.postprocessing.segmentation import (
    decide_segmentation,
    slice_probabilities,
    volume_probabilities,
)
from inference.prediction import FrameRef, ModelIdentity, Prediction
from inference.preprocessing.loader import (
    FrameFailure,
    PreparedFrame,
    batches,
    chunks,
    iter_prepared,
    prepare_volume,
)
from inference.preprocessing.pixels import DecodeError
from inference.preprocessing.plan import SeriesPlan, plan_series
from inference.sliding_window import Network
from inference.spec import ModelSpec, Task
from inference.volumes import predict_windowed

logger = logging.getLogger(__name__)


class Model:
    """A model package running on one backend; build it with `load_model`.

    Attributes
    ----------
    package : ModelPackage
        The checked package (``package.spec`` is the parsed ``model.toml``).
    """

    def __init__(
        self,
        package: ModelPackage,
        backend: Backend,
        gate: GpuGate,
        preprocess_threads: int,
        ensemble: Sequence[Backend] = (),
    ) -> None:
        self.package = package
        self._backend = backend
        self._ensemble = tuple(ensemble)  # the package's other networks, same backend kind
        self._gate = gate
        self._pool = ThreadPoolExecutor(
            max_workers=preprocess_threads, thread_name_prefix=f"prep-{package.spec.model.name}"
        )
        self._cam_weights = package.cam_weight() if package.spec.output.cam is not None else None

    @property
    def spec(self) -> ModelSpec:
        """The parsed ``model.toml``: name, version, task, modalities, labels ..."""
        return self.package.spec

    @property
    def identity(self) -> ModelIdentity:
        """Name, version and description written into every result."""
        return self.package.identity

    @property
    def backend_name(self) -> str:
        """``tensorrt``, ``onnxruntime`` or ``torch``."""
        return self._backend.name

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N``."""
        return self._backend.device

    def __repr__(self) -> str:
        info = self.spec.model
        where = f"{self.backend_name} on {self.device}"
        return f"Model({info.name!r} {info.version}, {info.task.value}, {where})"

    def predict(self, series: Sequence[Dataset], *, keep_probabilities: bool = False) -> Prediction:
        """Run the model on the instances of one series.

        Parameters
        ----------
        series : sequence of pydicom.Dataset
            Every instance of the series, in any order; pixel data is decoded here, in
            a thread pool ahead of the model.
        keep_probabilities : bool
            For segmentation, also return the source-grid probabilities (memory:
            four bytes per voxel and label).

        Returns
        -------
        Prediction
            Classification, Segmentation or Detection, per the package's task, with
            ``skipped`` naming anything left out.

        Raises
        ------
        UnsupportedSeriesError
            When nothing in the series can run; the reason says why.
        """
        sample = InputSample()
        prediction = self._predict(series, sample, keep_probabilities)
        return replace(prediction, input_statistics=sample.statistics())

    def _predict(
        self, series: Sequence[Dataset], sample: InputSample, keep_probabilities: bool
    ) -> Prediction:
        """`predict` on the path the package takes, its inputs' subsamples into ``sample``."""
        plan = plan_series(series, self.spec)
        task = self.spec.model.task
        if self.spec.input.window is not None:
            with self._gate.hold(self.device):
                return predict_windowed(
                    series,
                    plan,
                    self.spec,
                    self.identity,
                    self._pool,
                    [self._network(b) for b in (self._backend, *self._ensemble)],
                    keep_probabilities,
                    input_sample=sample,
                )
        if task is Task.SEGMENTATION and self.spec.input.dimensions == 3:
            return self._predict_volume(series, plan, sample, keep_probabilities)
        if task is Task.SEGMENTATION:
            return self._predict_slices(series, plan, sample, keep_probabilities)
        feed = _FrameFeed(iter_prepared(series, plan.stacks, self.spec, self._pool), sample)
        outputs = self._run(iter(feed))
        prepared = feed.prepared
        skipped = plan.skipped + tuple(feed.failures)
        if not prepared:
            raise UnsupportedSeriesError("; ".join(skipped), plan.series_instance_uid)
        if task is Task.CLASSIFICATION:
            return build_classification(
                self.spec,
                self.identity,
                plan.series_instance_uid,
                prepared,
                outputs,
                self._cam_weights,
                skipped,
            )
        return build_detection(
            self.spec, self.identity, plan.series_instance_uid, prepared, outputs, skipped
        )

    def _predict_slices(
        self,
        series: Sequence[Dataset],
        plan: SeriesPlan,
        sample: InputSample,
        keep_probabilities: bool,
    ) -> Prediction:
        """A 2D segmentation, decided batch by batch as the network returns it.

        Each batch's outputs become masks on the source frames before the next batch
        runs, so that the series' raw outputs (four bytes per pixel and channel) are
        never held whole, only its masks (one byte per pixel and label).
        """
        feed = _FrameFeed(iter_prepared(series, plan.stacks, self.spec, self._pool), sample)
        name = self.spec.output.name

        def decided() -> Iterator[tuple[FrameRef, Array | npt.NDArray[np.bool_]]]:
            with self._gate.hold(self.device):
                for group in chunks(feed.frames(), self.spec.runtime.max_batch):
                    raw = self._backend.infer(iter([np.stack([p.input for p in group])]))[name]
                    fits = [p.fit for p in group]
                    probs = slice_probabilities(self.spec, raw, fits, keep_probabilities)
                    yield from zip([p.frame.ref for p in group], probs, strict=True)

        result = decide_segmentation(
            self.spec,
            self.identity,
            plan.series_instance_uid,
            plan.stacks[0],
            decided(),
            plan.skipped,
            keep_probabilities,
        )
        skipped = plan.skipped + tuple(feed.failures)
        if not feed.prepared:
            raise UnsupportedSeriesError("; ".join(skipped), plan.series_instance_uid)
        return replace(result, skipped=skipped) if feed.failures else result

    def _network(self, backend: Backend) -> Network:
        """One backend as a function from a window batch to the main output."""
        name = self.spec.output.name

        def run(batch: Array) -> Array:
            return backend.infer(iter([batch]))[name]

        return run

    def _run(self, inputs: Iterator[Array]) -> dict[str, Array]:
        with self._gate.hold(self.device):
            return self._backend.infer(batches(inputs, self.spec.runtime.max_batch))

    def _predict_volume(
        self,
        series: Sequence[Dataset],
        plan: SeriesPlan,
        sample: InputSample,
        keep_probabilities: bool,
    ) -> Prediction:
        stack = plan.stacks[0]
        try:
            volume, fit = prepare_volume(series, stack, self.spec, self._pool)
        except (DecodeError, ValueError) as exc:
            raise UnsupportedSeriesError(
                f"stack ({stack.description}): {exc}", plan.series_instance_uid
            ) from exc
        sample.add(volume)
        outputs = self._run(iter([volume]))
        probs = volume_probabilities(self.spec, outputs[self.spec.output.name], fit)
        return decide_segmentation(
            self.spec,
            self.identity,
            plan.series_instance_uid,
            stack,
            zip([f.ref for f in stack.frames], probs, strict=True),
            plan.skipped,
            keep_probabilities,
        )

    def close(self) -> None:
        """Stop the preprocessing threads and release the backend."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for backend in (self._backend, *self._ensemble):
            backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


_HANDED_OVER = np.empty((0,), dtype=np.float32)
"""The input of a frame already given to the model: the feed keeps no pixels."""


class _FrameFeed:
    """The model inputs of prepared frames, in order; it keeps which frame each input
    was (``prepared``, in output order, without its pixels: a long series' inputs
    are hundreds of megabytes) and why the others failed (``failures``), so that
    outputs are matched to frames once the backend has run them; each input leaves a
    subsample in ``sample``."""

    def __init__(self, items: Iterator[PreparedFrame | FrameFailure], sample: InputSample) -> None:
        self._items = items
        self._sample = sample
        self.prepared: list[PreparedFrame] = []
        self.failures: list[str] = []

    def frames(self) -> Iterator[PreparedFrame]:
        """The prepared frames, in order; failures are logged and kept aside."""
        for item in self._items:
            if isinstance(item, FrameFailure):
                logger.warning("%s", item.reason)
                self.failures.append(item.reason)
                continue
            self._sample.add(item.input)
            self.prepared.append(replace(item, input=_HANDED_OVER))
            yield item

    def __iter__(self) -> Iterator[Array]:
        return (item.input for item in self.frames())


def load_model(
    path: Path | str,
    backend: str = "auto",
    device: str = "auto",
    *,
    cache_dir: Path | str | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    preprocess_threads: int | None = None,
    gpu_gate: GpuGate | None = None,
) -> Model:
    """Check a model package and start it on a backend.

    Parameters
    ----------
    path : pathlib.Path or str
        The package folder (``model.toml`` + ``model.onnx``).
    backend : str
        ``auto`` (TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU; logs the
        pick and why), ``tensorrt``, ``onnxruntime`` or ``torch``.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    cache_dir : pathlib.Path or str, optional
        Where TensorRT engines are cached (the node passes its storage dir); a
        per-user cache folder by default.
    intra_op_threads, inter_op_threads : int
        ONNX Runtime (and PyTorch CPU) thread counts; 0 leaves the library default.
    preprocess_threads : int, optional
        Decoding threads; by default one fewer than the CPUs (at least one, at most
        8): the calling thread batches the inputs and decides the outputs, and one
        more decoder only contends with it (2 cores, a 140-slice CT through a
        threshold model: 0.161 s against 0.170 s with two; a real 2D CNN: equal).
    gpu_gate : GpuGate, optional
        Bounds concurrent models per GPU; the process-wide gate by default.

    Returns
    -------
    Model

    Raises
    ------
    ModelPackageError
        When the package is broken (names the file and field).
    BackendUnavailableError
        When the backend asked for cannot run here, or with ``auto`` none can, or
        an ensemble package (several ``runtime.networks``) is asked to run on torch.
    ValueError
        When ``backend`` or ``device`` is not a known name, or thread counts are
        negative.
    """
    if min(intra_op_threads, inter_op_threads) < 0:
        raise ValueError(
            f"thread counts must be >= 0, got intra {intra_op_threads}, inter {inter_op_threads}"
        )
    package = validate_package(path)
    options = BackendOptions(
        device=resolve_device(device),
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
    )
    built = create_backend(package, backend, options)
    if len(package.networks) > 1 and built.name == "torch":
        built.close()
        raise BackendUnavailableError(
            "torch",
            f"{package.path}: runtime.networks holds {len(package.networks)} ONNX networks "
            "(an ensemble); the torch backend runs one torch file: use onnxruntime or tensorrt",
        )
    ensemble = []
    try:
        for network in package.networks[1:]:
            ensemble.append(
                create_backend(replace(package, onnx_path=network), built.name, built.options)
            )
    except Exception:
        for started in (built, *ensemble):
            started.close()
        raise
    threads = preprocess_threads or max(1, min(8, (os.cpu_count() or 1) - 1))
    return Model(package, built, gpu_gate or SHARED_GATE, threads, ensemble)


__all__ = ["Model", "load_model"]
