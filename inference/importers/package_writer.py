"""Writing an imported package: all of it or nothing, then checked as the node reads it.

The importers export networks and write ``model.toml`` and the licence into a
staging folder beside the target; only a package that `inference.validate_package`
accepts is renamed into place, so a failed import never leaves a half-written
package that a node config could point at.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.finetune.toml_writer import dumps
from inference.importers.onnx_export import DEFAULT_TOLERANCE
from inference.package import ModelPackage, validate_package
from inference.spec import SPEC_FILE

logger = logging.getLogger(__name__)

LICENSE_FILE = "LICENSE"


@dataclass(frozen=True)
class ImportOptions:
    """What every importer takes beside its source folder.

    Parameters
    ----------
    labels_file : pathlib.Path, optional
        A label mapping file (`inference.importers.labels`).
    name, version : str, optional
        Override the package's name and version (defaults: from the source).
    modality : str, optional
        The DICOM modality, when the source does not say.
    tolerance : float
        Largest allowed difference between a source network and its ONNX export.
    allow_pickle : bool
        Load checkpoints that hold Python objects beyond tensors (runs their code).
    overwrite : bool
        Replace an existing package folder.
    """

    labels_file: Path | None = None
    name: str | None = None
    version: str | None = None
    modality: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    allow_pickle: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class ImportResult:
    """An imported package and what the import measured and decided on the way."""

    package: ModelPackage
    parity: dict[str, float]  # network file -> max |source - ONNX Runtime| on random windows
    generic_labels: tuple[str, ...]  # labels without a coded concept from a mapping file
    notes: tuple[str, ...]  # source steps accepted without an effect in the node, and why

    def report_lines(self) -> list[str]:
        """What ``dicom-node import-model`` prints: parity, notes, generic labels."""
        lines = [
            f"parity {name}: max |source - ONNX Runtime| {diff:.3g} on random windows"
            for name, diff in self.parity.items()
        ]
        lines += [f"note: {note}" for note in self.notes]
        if self.generic_labels:
            lines.append(
                f"labels with a generic concept (no --labels entry): {list(self.generic_labels)}"
            )
        return lines


@contextmanager
def staged(target: Path, overwrite: bool) -> Iterator[Path]:
    """A staging folder that becomes ``target`` when the block succeeds.

    Raises
    ------
    FileExistsError
        When ``target`` exists and ``overwrite`` is false.
    """
    if target.exists() and not overwrite:
        raise FileExistsError(f"package folder exists: {target} (replace it: --force)")
    stage = target.with_name(f".{target.name}.importing")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    stage.rename(target)


def write_spec(
    stage: Path, spec: dict[str, Any], header: str, license_text: str | None
) -> ModelPackage:
    """Write ``model.toml`` (and the licence) into the staging folder and check it.

    Parameters
    ----------
    stage : pathlib.Path
        The staging folder, already holding the networks.
    spec : dict
        The ``model.toml`` tables; ``origin.license_file`` is set here when a
        licence text is given.
    header : str
        The comment block at the top of ``model.toml``.
    license_text : str, optional
        The source's licence, copied verbatim into ``LICENSE``.

    Returns
    -------
    ModelPackage
        The package as the node reads it.

    Raises
    ------
    ModelPackageError
        When the package does not validate (a mapping bug, never a user error).
    """
    if license_text is not None:
        (stage / LICENSE_FILE).write_text(license_text, encoding="utf-8")
        spec = {**spec, "origin": {**spec["origin"], "license_file": LICENSE_FILE}}
    (stage / SPEC_FILE).write_text(dumps(spec, header), encoding="utf-8")
    return validate_package(stage)
