"""Every configured model package checked against its ONNX graph, before anything listens.

Shared by ``check-config`` and ``serve``: a broken package is a start-up error naming
the config key and the file, not a failure at the first study. A package's drift
profile (``profile.json``) must match its name, labels and the node's features too, and
a chained route's steps must ask of each earlier step's model what it can give
(`chain_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.config import NodeConfig, StepConfig
from dicom_node.work.drift import ProfileError, package_profile
from inference import ModelPackageError, Task, validate_package


@dataclass(frozen=True)
class PackageFacts:
    """What the chain checks need of a package: its task and label names."""

    task: Task
    labels: tuple[str, ...]


def model_package_problems(config: NodeConfig) -> list[tuple[str, str]]:
    """``(key path, message)`` for each model package that does not validate, and each
    chain step that the packages of its earlier step cannot serve."""
    problems = []
    facts: dict[str, PackageFacts] = {}
    for index, model in enumerate(config.models):
        try:
            package = validate_package(model.path)
        except ModelPackageError as exc:
            problems.append((f"models[{index}].path", str(exc)))
            continue
        labels = tuple(label.name for label in package.spec.labels)
        facts[model.name] = PackageFacts(package.spec.model.task, labels)
        try:
            package_profile(package)
        except ProfileError as exc:
            problems.append((f"models[{index}].path", f"drift profile: {exc}"))
    return problems + chain_problems(config, facts)


def chain_problems(config: NodeConfig, facts: dict[str, PackageFacts]) -> list[tuple[str, str]]:
    """``(key path, message)`` for each step asking an earlier step's model for a label it
    does not have, a mask it does not make (no segmenter), a volume or probability it
    does not give, or a selection from something that is no classifier. Models whose
    package did not load are left out (their own problem is reported)."""
    problems = []
    for index, route in enumerate(config.routes):
        for j, step in enumerate(route.steps):
            upstream = None if step.upstream is None else route.step_named(step.upstream)
            if upstream is None:
                continue
            for model in upstream.candidate_models():
                if model in facts:
                    key = f"routes[{index}].steps[{j}]"
                    problems.extend(_step_problems(key, step, upstream, model, facts[model]))
    return list(dict.fromkeys(problems))


def _step_problems(
    key: str, step: StepConfig, upstream: StepConfig, model: str, facts: PackageFacts
) -> list[tuple[str, str]]:
    source = f"model {model!r} (step {upstream.step_name!r}) is a {facts.task} model"
    problems = []

    def need_label(field: str, label: str) -> None:
        if label not in facts.labels:
            problems.append(
                (
                    f"{key}.{field}",
                    f"model {model!r} (step {upstream.step_name!r}) has no label {label!r} "
                    f"(its labels: {', '.join(facts.labels)})",
                )
            )

    when = step.when
    if when is not None:
        need_label("when.label", when.label)
        if when.uses_volume() and facts.task is not Task.SEGMENTATION:
            problems.append((f"{key}.when", f"{source}: it gives no volumes"))
        if when.uses_probability() and facts.task is Task.SEGMENTATION:
            problems.append((f"{key}.when", f"{source}: it gives no probabilities"))
    mask = step.mask()
    if mask is not None:
        if facts.task is not Task.SEGMENTATION:
            problems.append((f"{key}.input_mask", f"{source}, not a segmentation: no mask"))
        need_label("input_mask", mask[1])
    if step.select is not None:
        if facts.task is not Task.CLASSIFICATION:
            problems.append((f"{key}.select.step", f"{source}: only a classifier's label selects"))
        for label in step.select.models:
            need_label(f"select.models.{label}", label)
    return problems
