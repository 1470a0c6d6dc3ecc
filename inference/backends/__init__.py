"""Backends that run a checked model package: TensorRT, ONNX Runtime, PyTorch.

One small class each behind `Backend`; the heavy library is imported only when that
backend is built, so that `inference` imports on a CPU-only machine without them.
"""
