"""Choosing a backend per model: ``auto`` tries TensorRT, ONNX Runtime CUDA, then CPU."""

from __future__ import annotations

import logging

from inference.backends.base import Backend, BackendOptions
from inference.errors import BackendUnavailableError
from inference.package import ModelPackage

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "tensorrt", "onnxruntime", "torch")


def _build(name: str, package: ModelPackage, options: BackendOptions) -> Backend:
    if name == "tensorrt":
        from inference.backends.tensorrt_engine import TensorRTBackend

        return TensorRTBackend(package, options)
    if name == "onnxruntime":
        from inference.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(package, options)
    from inference.backends.torch_module import TorchBackend

    return TorchBackend(package, options)


def _candidates(package: ModelPackage, device: str) -> list[tuple[str, str]]:
    """(backend, device) in the order ``auto`` tries them."""
    order: list[tuple[str, str]] = []
    if package.onnx_path is not None:
        if device.startswith("cuda"):
            order += [("tensorrt", device), ("onnxruntime", device)]
        order.append(("onnxruntime", "cpu"))
    if package.torch_path is not None:
        if device.startswith("cuda"):
            order.append(("torch", device))
        order.append(("torch", "cpu"))
    return order


def create_backend(package: ModelPackage, backend: str, options: BackendOptions) -> Backend:
    """Build the backend asked for, or with ``auto`` the best one that starts here.

    Parameters
    ----------
    package : ModelPackage
        A checked package.
    backend : str
        ``auto``, ``tensorrt``, ``onnxruntime`` or ``torch``.
    options : BackendOptions
        Resolved device (``cpu`` or ``cuda:N``), thread counts and engine cache.

    Returns
    -------
    Backend

    Raises
    ------
    ValueError
        When ``backend`` is not one of the names above.
    BackendUnavailableError
        When the named backend cannot start, or with ``auto`` none can; the
        message holds every reason tried.
    """
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKEND_NAMES)}")
    name = package.spec.model.name
    if backend != "auto":
        built = _build(backend, package, options)
        logger.info("model %s: backend %s on %s (asked for)", name, backend, options.device)
        return built
    reasons: list[str] = []
    for candidate, device in _candidates(package, options.device):
        try:
            built = _build(candidate, package, BackendOptions(
                device=device,
                intra_op_threads=options.intra_op_threads,
                inter_op_threads=options.inter_op_threads,
                cache_dir=options.cache_dir,
            ))  # fmt: skip
        except BackendUnavailableError as exc:
            reasons.append(f"{candidate} on {device}: {exc.reason}")
            continue
        why = f" (skipped: {'; '.join(reasons)})" if reasons else ""
        logger.info("model %s: auto picked %s on %s%s", name, candidate, device, why)
        return built
    raise BackendUnavailableError("auto", "; ".join(reasons) or "the package has no network file")
