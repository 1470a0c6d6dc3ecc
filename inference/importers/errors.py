"""The one error the importers raise: a source model that cannot become a package.

It is a `ModelPackageError`, so it names the file and the key at fault: a bundle's
``configs/inference.json`` and the config id of the transform, an nnU-Net
``plans.json`` and the plans key, or the weights file of a network that does not
export.
"""

from __future__ import annotations

from inference.errors import ModelPackageError


class ImportModelError(ModelPackageError):
    """A MONAI bundle or nnU-Net result cannot be mapped onto a model package.

    Parameters
    ----------
    path : pathlib.Path
        The source file at fault (``configs/inference.json``, ``plans.json``, a
        checkpoint, the labels file) or the source folder.
    field : str
        The key in that file (a MONAI config id such as
        ``"preprocessing::transforms::3"``, a plans key) or ``"network"``.
    reason : str
        What cannot be mapped, naming the transform or the offending value.
    """
