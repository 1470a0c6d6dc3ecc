"""Model cards checked against their package's version, for ``check-config`` and ``serve``.

A card written for another version of a package (a hand-bumped ``model.toml``, a
package copied over an older one) is a warning, not an error: the package still runs,
but its results name no card (`inference.ModelPackage.identity`), and a reviewer should
know that the card on file is not the one for this version. Only ``model.toml`` and
``model_card.json`` are read; a broken package is `package_check`'s error.
"""

from __future__ import annotations

from dicom_node.config import NodeConfig
from inference import ModelPackageError, card_mismatch


def model_card_warnings(config: NodeConfig) -> list[tuple[str, str]]:
    """``(key path, message)`` for each model whose card describes another version."""
    warnings = []
    for index, model in enumerate(config.models):
        try:
            message = card_mismatch(model.path)
        except ModelPackageError:
            continue  # reported as a problem by package_check
        if message is not None:
            warnings.append((f"models[{index}].path", message))
    return warnings
