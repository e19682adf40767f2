"""Rafay's variable selectors: an EnvironmentTemplate variable aliased to resources' variables.

`options.override.selector: resources.eks.eks_cluster_name` (or a `selectors` list) makes the
environment variable's final value (after the Environment and the run request) set that
variable of that resource, and only that one: its name no longer overrides other resources'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trellis_templates.documents import EnvironmentTemplate, Variable
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.variables import Layer, Merged


@dataclass(frozen=True, slots=True)
class Selection:
    variable: str  # the EnvironmentTemplate variable
    resource: str
    target: str  # the resource's variable
    path: Path  # where the selector is written


def selections(template: EnvironmentTemplate, source: Source, problems: Problems) -> list[Selection]:
    resources = [resource.name for resource in template.spec.resources]
    out: list[Selection] = []
    for index, var in enumerate(template.spec.variables):
        override = var.options.override
        written: list[tuple[str, Path]] = [
            (sel, ("spec", "variables", index, "options", "override", "selectors", j))
            for j, sel in enumerate(override.selectors)
        ]
        if override.selector:
            written.append((override.selector, ("spec", "variables", index, "options", "override", "selector")))
        for text, path in written:
            parts = text.split(".")
            if len(parts) != 3 or parts[0] != "resources" or not all(parts):
                problems.error(source, path, f"selector {text!r} is not resources.<resource>.<variable>")
                continue
            if parts[1] not in resources:
                problems.error(
                    source,
                    path,
                    f"selector {text!r} names unknown resource {parts[1]!r}",
                    closest(parts[1], resources),
                )
                continue
            out.append(Selection(var.name, parts[1], parts[2], path))
    return out


def selector_layer(
    resource: str,
    declared: set[str],
    *,
    chosen: list[Selection],
    env_merged: Mapping[str, Merged],
    source: Source,
    problems: Problems,
) -> Layer:
    """The top layer of `resource`: the values its selectors give (`declared`: its variables)."""
    variables: list[Variable] = []
    paths: list[Path] = []
    for sel in chosen:
        if sel.resource != resource:
            continue
        if sel.target not in declared:
            problems.error(
                source,
                sel.path,
                f"resource {resource!r} has no variable {sel.target!r}",
                closest(sel.target, declared),
            )
            continue
        merged = env_merged.get(sel.variable)
        if merged is None or merged.value is None:
            continue
        variables.append(Variable(name=sel.target, value_type=merged.value_type, value=merged.value))
        paths.append(sel.path)
    label = f"EnvironmentTemplate selector for {resource!r}"
    return Layer(label, variables, source, (), adds=False, value_paths=tuple(paths))
