"""Phase 2 of a compilation: the environment's variables layered, typed and rendered, and the
compile-time scope (`environment`, `run`, `tenant`, `context`) every string is rendered with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trellis_templates.contexts import Attached, context_scope
from trellis_templates.documents import ResourceTemplate
from trellis_templates.errors import Problems, closest
from trellis_templates.rendering import Renderer
from trellis_templates.resolved import Documents, RunInfo
from trellis_templates.selectors import Selection, selections
from trellis_templates.variables import (
    Layer,
    Merged,
    inputs_layer,
    merge,
    required_missing,
    typed_value,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Variables:
    """The environment-level variables: merged, rendered (`values`) and in `scope`."""

    documents: Documents
    layers: tuple[Layer, ...]  # lowest first: contexts, EnvironmentTemplate, Environment, run inputs
    merged: Mapping[str, Merged]
    selections: tuple[Selection, ...]
    values: dict[str, Any]
    late: bool  # some value reads what is known only at run time
    sensitive: frozenset[str]
    selected: frozenset[str]  # the variables that set resources' variables through selectors
    scope: dict[str, Any]  # `environment.variables` set to `values`
    resource_names: frozenset[str]  # of the EnvironmentTemplate: the outputs strings may read


def context_layers(contexts: tuple[Attached, ...]) -> list[Layer]:
    return [
        Layer(context.label, context.spec.variables, context.source, (*context.base, "variables"))
        for context in contexts
    ]


def resolve_variables(
    documents: Documents, *, inputs: Mapping[str, str], info: RunInfo, problems: Problems
) -> Variables:
    """Layer, type and render the environment's variables; the scope holds them."""
    template, environment = documents.template, documents.environment
    undeclared_environment_variables(documents, declared_names(documents, environment=False), problems)
    input_layer = inputs_layer(inputs, declared_names(documents), problems, strict=info.strict_inputs)
    layers = (
        *context_layers(documents.template_contexts),
        Layer(
            f"EnvironmentTemplate {template.metadata.name!r}",
            template.spec.variables,
            documents.template_source,
            ("spec", "variables"),
        ),
        *context_layers(documents.environment_contexts),
        Layer(
            f"Environment {environment.metadata.name!r}",
            environment.spec.variables,
            documents.environment_source,
            ("spec", "variables"),
        ),
        input_layer,
    )
    merged = merge(layers, problems)
    chosen = selections(template, documents.template_source, problems)
    required_missing(merged, environment.metadata.name, problems, strict=info.require_inputs)
    scope = base_scope(documents, info)
    resources = frozenset(resource.name for resource in template.spec.resources)
    values, late, sensitive = rendered_values(merged, Renderer(problems, scope, resources), problems)
    scope["environment"]["variables"] = values
    return Variables(
        documents=documents,
        layers=layers,
        merged=merged,
        selections=tuple(chosen),
        values=values,
        late=late,
        sensitive=sensitive,
        selected=frozenset(selection.variable for selection in chosen),
        scope=scope,
        resource_names=resources,
    )


def undeclared_environment_variables(documents: Documents, template_names: set[str], problems: Problems) -> None:
    """An Environment's variable no template declares is most likely misspelt: warn, with a hint."""
    for index, variable in enumerate(documents.environment.spec.variables):
        if variable.name not in template_names:
            problems.warn(
                documents.environment_source,
                ("spec", "variables", index, "name"),
                f"variable {variable.name!r} is not declared by any template",
                closest(variable.name, template_names),
            )


def declared_names(documents: Documents, *, environment: bool = True) -> set[str]:
    """Every variable name a template (and, with `environment`, the Environment) declares."""
    template = documents.template
    names = {variable.name for variable in template.spec.variables}
    if environment:
        names |= {variable.name for variable in documents.environment.spec.variables}
    for context in documents.contexts:
        names |= {variable.name for variable in context.spec.variables}
    for resource in template.spec.resources:
        names |= {variable.name for variable in resource.variables}
    for resource_template, _ in documents.bundle.all(ResourceTemplate):
        names |= {variable.name for variable in resource_template.spec.variables}
    return names


def base_scope(documents: Documents, info: RunInfo) -> dict[str, Any]:
    """The scope before any variable is rendered: `environment.variables` still empty."""
    environment = documents.environment
    scope: dict[str, Any] = {
        "environment": {
            "name": environment.metadata.name,
            "id": info.environment_id or environment.metadata.name,
            "variables": {},
        },
        "run": {"id": info.run_id, "action": info.action, "requested_by": info.requested_by},
        "tenant": info.tenant,
        "context": context_scope(documents.contexts),
    }
    if info.trigger is not None:
        scope["trigger"] = dict(info.trigger)
    return scope


def rendered_values(
    merged: Mapping[str, Merged], renderer: Renderer, problems: Problems
) -> tuple[dict[str, Any], bool, frozenset[str]]:
    """Typed, rendered values; whether any stays late; the names that are sensitive."""
    values: dict[str, Any] = {}
    late = False
    for name, variable in merged.items():
        source, path = variable.set_at
        value = renderer.value(typed_value(variable, problems), source, path)
        late = late or has_late(value, renderer)
        values[name] = value
    return values, late, frozenset(name for name, variable in merged.items() if variable.sensitive)


def has_late(value: Any, renderer: Renderer) -> bool:
    if isinstance(value, str):
        return renderer.late(value)
    if isinstance(value, dict):
        return any(has_late(item, renderer) for item in value.values())
    if isinstance(value, list):
        return any(has_late(item, renderer) for item in value)
    return False
