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
from trellis_templates.sealing import Sealer, sealed_inputs, sensitive_names
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
    sealer: Sealer  # seals sensitive values where they enter (a no-op without a sealer)
    sealed_names: frozenset[str]  # declared sensitive anywhere: their values are sealed at every level
    inputs: dict[str, str]  # the run request's variables, those declared sensitive sealed
    visible_contexts: frozenset[str]  # the environment's contexts: what every string may read


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
    sealer = Sealer(info.seal, problems)
    secret_names = declared_sensitive(documents) if sealer.active else frozenset()
    inputs = sealed_inputs(inputs, secret_names, sealer)
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
    scope = base_scope(documents, info, sealer)
    resources = frozenset(resource.name for resource in template.spec.resources)
    visible = frozenset(scope["context"])
    renderer = Renderer(problems, scope, resources, contexts=visible, late_contexts=visible)
    values, late, sensitive = rendered_values(merged, renderer, problems, sealer, secret_names)
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
        sealer=sealer,
        sealed_names=secret_names,
        inputs=inputs,
        visible_contexts=visible,
    )


def declared_sensitive(documents: Documents) -> frozenset[str]:
    """Every variable name a document of the run declares sensitive (sealing.sensitive_names)."""
    return sensitive_names(
        documents.bundle,
        documents.template.spec.variables,
        documents.environment.spec.variables,
        *(resource.variables for resource in documents.template.spec.resources),
        *(context.spec.variables for context in documents.contexts),
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
        names |= {variable.name for action in resource_template.spec.actions for variable in action.variables}
    names |= {variable.name for action in template.spec.actions for variable in action.variables}  # day-2 actions'
    return names


def base_scope(documents: Documents, info: RunInfo, sealer: Sealer | None = None) -> dict[str, Any]:
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
        "context": context_scope(documents.contexts, sealer),
    }
    if info.trigger is not None:
        scope["trigger"] = dict(info.trigger)
    return scope


def rendered_values(
    merged: Mapping[str, Merged],
    renderer: Renderer,
    problems: Problems,
    sealer: Sealer | None = None,
    sealed_names: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], bool, frozenset[str]]:
    """Typed, rendered values; whether any stays late; the names that are sensitive.

    A sensitive value is sealed once rendered (what it reads of other sensitive values is
    already sealed), before anything else reads it; one that stays late is left to the scheduler."""
    values: dict[str, Any] = {}
    late = False
    for name, variable in merged.items():
        source, path = variable.set_at
        value = renderer.value(typed_value(variable, problems), source, path)
        value_late = has_late(value, renderer)
        late = late or value_late
        if sealer is not None and sealer.active and not value_late and (variable.sensitive or name in sealed_names):
            value = sealer.value(value, f"variable {name!r}", source, path)
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
