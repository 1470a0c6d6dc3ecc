"""Every configured model package checked against its ONNX graph, before anything listens.

Shared by ``check-config`` and ``serve``: a broken package is a start-up error naming
the config key and the file, not a failure at the first study. A package's drift
profile (``profile.json``) must match its labels too.
"""

from __future__ import annotations

from dicom_node.config import NodeConfig
from dicom_node.work.drift import PROFILE_FILE, ProfileError, read_profile
from inference import ModelPackageError, validate_package


def model_package_problems(config: NodeConfig) -> list[tuple[str, str]]:
    """``(key path, message)`` for each model package that does not validate."""
    problems = []
    for index, model in enumerate(config.models):
        try:
            package = validate_package(model.path)
        except ModelPackageError as exc:
            problems.append((f"models[{index}].path", str(exc)))
            continue
        profile = model.path / PROFILE_FILE
        if profile.exists():
            try:
                read_profile(profile, [label.name for label in package.spec.labels])
            except ProfileError as exc:
                problems.append((f"models[{index}].path", f"drift profile: {exc}"))
    return problems
