"""Models loaded once per process and shared by its worker threads.

Loading a model (checking the package, starting ONNX Runtime, building or loading a
TensorRT engine) takes from a second to minutes, so each model is loaded on first use
and kept; a second thread asking for the same model waits for the first load instead
of starting its own.
"""

from __future__ import annotations

import logging
import threading

from dicom_node.config import NodeConfig
from inference import Model, load_model

logger = logging.getLogger(__name__)


class ModelCache:
    """``get(name)`` returns the loaded model named in ``[[models]]``.

    Parameters
    ----------
    config
        The node config: model paths, backends, devices, worker thread settings, and
        ``storage_dir/engines`` for the TensorRT engine cache.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._models: dict[str, Model] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> Model:
        """The model called ``name``, loaded on first use.

        Raises
        ------
        KeyError
            When no ``[[models]]`` entry has that name (the config changed under a job).
        inference.ModelPackageError, inference.BackendUnavailableError
            When the package is broken or its backend cannot run here.
        """
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            model = self._models.get(name)
            if model is None:
                settings = self.config.model(name)
                worker = self.config.worker
                model = load_model(
                    settings.path,
                    backend=settings.backend,
                    device=settings.device,
                    cache_dir=self.config.node.storage_dir / "engines",
                    intra_op_threads=worker.intra_op_threads,
                    inter_op_threads=worker.inter_op_threads,
                )
                logger.info("model loaded", extra={"model": name, "loaded": repr(model)})
                self._models[name] = model
            return model

    def close(self) -> None:
        """Release every loaded model (threads, GPU memory)."""
        with self._guard:
            models, self._models = list(self._models.values()), {}
        for model in models:
            model.close()
