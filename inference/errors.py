"""The errors `inference` raises: one root, with subclasses that carry the offending value.

`dicom_node` catches `InferenceError` around a job; it tells a broken model package
(`ModelPackageError`, a configuration problem found at start-up) from a series the
model cannot take (`UnsupportedSeriesError`, a job that is skipped, not failed).
"""

from __future__ import annotations

from pathlib import Path


class InferenceError(Exception):
    """Root of every error raised by `inference`."""


class ModelPackageError(InferenceError):
    """A model package is broken: names the file and the field that is wrong.

    Parameters
    ----------
    path : pathlib.Path
        The file at fault (``model.toml``, ``model.onnx``) or the package folder.
    field : str
        The dotted key in ``model.toml`` or the graph element that is wrong,
        e.g. ``"output.labels"`` or ``"graph.input[image]"``.
    reason : str
        What is wrong with it, including the offending value.
    """

    def __init__(self, path: Path | str, field: str, reason: str) -> None:
        self.path = Path(path)
        self.field = field
        self.reason = reason
        super().__init__(f"{self.path}: {field}: {reason}")


class UnsupportedSeriesError(InferenceError):
    """The model cannot take this series at all; the job should be marked skipped.

    Parameters
    ----------
    reason : str
        Why the series was not run (wrong modality, no pixel data, no stack the
        model accepts ...); with several stacks, one reason per stack.
    series_instance_uid : str
        The series concerned, empty when the datasets do not say.
    """

    def __init__(self, reason: str, series_instance_uid: str = "") -> None:
        self.reason = reason
        self.series_instance_uid = series_instance_uid
        where = f" (series {series_instance_uid})" if series_instance_uid else ""
        super().__init__(f"series not supported{where}: {reason}")


class BackendUnavailableError(InferenceError):
    """The backend asked for cannot run here (library missing, no GPU, no file for it).

    Parameters
    ----------
    backend : str
        The backend name asked for (``"tensorrt"``, ``"onnxruntime"``, ``"torch"``).
    reason : str
        Why it cannot run, e.g. the import error.
    """

    def __init__(self, backend: str, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"backend {backend!r} unavailable: {reason}")
