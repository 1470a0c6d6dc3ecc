"""Every configured model package checked against its ONNX graph, before anything listens.

Shared by ``check-config`` and ``serve``: a broken package is a start-up error naming
the config key and the file, not a failure at the first study. A package's drift
profile (``profile.json``) must match its labels too, and a malformed model card
(``model_card.json``) is an error. A card written for another version of the package
is a warning: the package still runs, but its results do not name the card
(`card_version_warning`).
"""

from __future__ import annotations

from dicom_node.config import NodeConfig
from dicom_node.work.drift import PROFILE_FILE, ProfileError, read_profile
from inference import ModelPackage, ModelPackageError, validate_package


def card_version_warning(package: ModelPackage) -> str | None:
    """Why the package's model card does not apply to it, or ``None`` when it does or
    the package has none."""
    card, info = package.card, package.spec.model
    if card is None or card.applies_to(info.name, info.version):
        return None
    return (
        f"model_card.json describes {card.model} {card.version} but model.toml is "
        f"{info.name} {info.version}: results will not name the card; update the card "
        "(dicom-node export, or edit its model and version after review)"
    )


def check_model_packages(config: NodeConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(problems, warnings)``, each ``(key path, message)``, over every model package."""
    problems, warnings = [], []
    for index, model in enumerate(config.models):
        key = f"models[{index}].path"
        try:
            package = validate_package(model.path)
        except ModelPackageError as exc:
            problems.append((key, str(exc)))
            continue
        profile = model.path / PROFILE_FILE
        if profile.exists():
            try:
                read_profile(profile, [label.name for label in package.spec.labels])
            except ProfileError as exc:
                problems.append((key, f"drift profile: {exc}"))
        warning = card_version_warning(package)
        if warning is not None:
            warnings.append((key, warning))
    return problems, warnings
