"""Phase 3 of a compilation: each resource of the EnvironmentTemplate with its ResourceTemplate
found, its variables layered and rendered, and what its activities get (`ResourcePlan`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trellis_core.workflow import DEFAULT_POOL
from trellis_templates.contexts import Attached, context_scope
from trellis_templates.documents import EnvironmentResource, ResourceTemplate
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.hooks import HookContext, env_for
from trellis_templates.rendering import Renderer
from trellis_templates.resolved import Documents, RunInfo, attach_contexts
from trellis_templates.resources import ResourcePlan
from trellis_templates.scope import Variables, context_layers, rendered_values
from trellis_templates.sealing import Sealer
from trellis_templates.selectors import selector_layer
from trellis_templates.static import is_static
from trellis_templates.variables import Layer, env_encoding, merge, required_missing


@dataclass(frozen=True, slots=True, kw_only=True)
class Plans:
    """The resources that could be planned, in declaration order, and the workflow's scope.

    `scope["context"]` holds the environment's contexts only: a resource template's own contexts
    are in that resource's scope (its plan's renderer), never in another's.
    """

    variables: Variables
    plans: tuple[ResourcePlan, ...]
    scope: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Found:
    """A resource of the EnvironmentTemplate and the ResourceTemplate it names."""

    index: int
    entry: EnvironmentResource
    template: ResourceTemplate
    source: Source
    contexts: tuple[Attached, ...]


def plan_resources(variables: Variables, *, info: RunInfo, problems: Problems) -> Plans:
    """A plan for every resource whose template is found; duplicates and missing templates reported."""
    documents = variables.documents
    scope = variables.scope
    plans: list[ResourcePlan] = []
    seen: set[str] = set()
    for index, entry in enumerate(documents.template.spec.resources):
        if entry.name in seen:
            name_path = ("spec", "resources", index, "name")
            problems.error(documents.template_source, name_path, f"duplicate resource name {entry.name!r}")
            continue
        seen.add(entry.name)
        if is_static(entry):
            continue  # runs nothing: static.py gives its outputs
        found = find_template(documents, index, entry, problems)
        if found is not None:
            own = context_scope(found.contexts, variables.sealer)
            resource_scope = {**scope, "context": {**scope["context"], **own}} if own else scope
            plans.append(_plan(found, variables, resource_scope, info=info, problems=problems))
    return Plans(variables=variables, plans=tuple(plans), scope=scope)


def find_template(documents: Documents, index: int, entry: EnvironmentResource, problems: Problems) -> _Found | None:
    """The ResourceTemplate a resource names (its own name, or `template`), with its contexts attached."""
    path: Path = ("spec", "resources", index)
    name, version, name_path = entry.name, entry.resource_options.version, (*path, "name")
    if entry.template is not None:
        name, version, name_path = entry.template.name, entry.template.version, (*path, "template", "name")
    where = (documents.template_source, name_path)
    found = documents.bundle.find(ResourceTemplate, name, version, problems=problems, where=where)
    if found is None:
        return None
    template, source = found
    contexts = attach_contexts(documents.bundle, template.spec.contexts, source, problems)
    return _Found(index=index, entry=entry, template=template, source=source, contexts=contexts)


def _plan(
    found: _Found, variables: Variables, scope: dict[str, Any], *, info: RunInfo, problems: Problems
) -> ResourcePlan:
    documents, entry, template = variables.documents, found.entry, found.template
    merged = merge(resource_layers(found, variables, problems), problems)
    required_missing(merged, documents.environment.metadata.name, problems, strict=info.require_inputs)
    names, late_environment = variables.resource_names, variables.late
    visible = frozenset(scope["context"])
    variable_renderer = Renderer(
        problems,
        scope,
        names,
        late_environment=late_environment,
        contexts=visible,
        late_contexts=variables.visible_contexts,
    )
    values, late, sensitive = rendered_values(merged, variable_renderer, problems, variables.sealer)
    renderer = Renderer(
        problems,
        {**scope, "variables": values},
        names,
        late_variables=late,
        late_environment=late_environment,
        contexts=visible,
        late_contexts=variables.visible_contexts,
    )
    renderer.refs.update(variable_renderer.refs)
    encoded = {name: env_encoding(value, merged[name].value_type) for name, value in values.items()}
    attached = (found.contexts, documents.template_contexts, documents.environment_contexts)
    env, secret_env, files = context_env(
        attached, documents, renderer, variables.sealer, info=info, problems=problems
    )
    env |= env_for(encoded, tf=False)
    secret = sensitive | (variables.sensitive & set(values))
    masked = secret | {f"TRELLIS_VAR_{name}" for name in secret} | {f"TF_VAR_{name}" for name in secret}
    agents = tuple(agent.name for agent in entry.agents) or tuple(agent.name for agent in template.spec.agents)
    context = HookContext(
        bundle=documents.bundle,
        problems=problems,
        renderer=renderer,
        source=found.source,
        resource=entry.name,
        agents=agents or environment_agents(documents),
        inputs=values,
        sensitive=tuple(sorted(masked | secret_env)),
        env=env,
        action=info.action,
        email_relay_url=info.email_relay_url,
        files=files,
        sealer=variables.sealer,
    )
    return ResourcePlan(
        name=entry.name,
        index=found.index,
        entry=entry,
        template=template,
        source=found.source,
        ctx=context,
        tf_env={f"TF_VAR_{name}": value for name, value in encoded.items()},
    )


def resource_layers(found: _Found, variables: Variables, problems: Problems) -> list[Layer]:
    """Variable layers of one resource, lowest first (docs/templates.md, Variables)."""
    documents, entry, selected = variables.documents, found.entry, variables.selected
    environment_layers = variables.layers
    template_contexts = len(documents.template_contexts)
    layers = [
        Layer(
            f"ResourceTemplate {found.template.metadata.name!r}",
            found.template.spec.variables,
            found.source,
            ("spec", "variables"),
        ),
        *context_layers(found.contexts),
        *environment_layers[:template_contexts],
        overriding(environment_layers[template_contexts], selected),
        Layer(
            f"EnvironmentTemplate resource {entry.name!r}",
            entry.variables,
            documents.template_source,
            ("spec", "resources", found.index, "variables"),
        ),
        *(overriding(layer, selected) for layer in environment_layers[template_contexts + 1 :]),
    ]
    declared = {variable.name for layer in layers if layer.adds for variable in layer.variables}
    layers.append(
        selector_layer(
            entry.name,
            declared,
            chosen=list(variables.selections),
            env_merged=variables.merged,
            source=documents.template_source,
            problems=problems,
        )
    )
    return layers


def context_env(
    attached: Sequence[tuple[Attached, ...]],
    documents: Documents,
    renderer: Renderer,
    sealer: Sealer,
    *,
    info: RunInfo,
    problems: Problems,
) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """The environment variables and files every activity of a resource gets, and the secret
    ones (their values sealed)."""
    env: dict[str, str] = {"TRELLIS_ACTION": info.action}
    secret: set[str] = set()
    files: dict[str, str] = {}
    for contexts in attached:
        for context in contexts:
            for index, variable in enumerate(context.spec.envs):
                value_path = (*context.base, "envs", index, "value")
                env[variable.key] = renderer.text(variable.value, context.source, value_path)
                if variable.options.sensitive:
                    secret.add(variable.key)
                    what = f"env {variable.key!r} of {context.label}"
                    env[variable.key] = sealer.text(env[variable.key], what, context.source, value_path)
                if variable.options.required and not variable.value:
                    message = f"required environment variable {variable.key!r} has no value"
                    problems.error(context.source, value_path, message)
            for index, file in enumerate(context.spec.files):
                files[file.mount_path or file.name] = file.data
                if file.options.sensitive:
                    secret.add(file.mount_path or file.name)
                    what = f"file {file.name!r} of {context.label}"
                    data_path = (*context.base, "files", index, "data")
                    files[file.mount_path or file.name] = sealer.text(file.data, what, context.source, data_path)
    for index, variable in enumerate(documents.environment.spec.envs):
        value_path = ("spec", "envs", index, "value")
        env[variable.key] = renderer.text(variable.value, documents.environment_source, value_path)
        if variable.options.sensitive:
            secret.add(variable.key)
            what = f"env {variable.key!r} of the Environment"
            env[variable.key] = sealer.text(env[variable.key], what, documents.environment_source, value_path)
    return env, secret, files


def environment_agents(documents: Documents) -> tuple[str, ...]:
    """The agent pools of the Environment, else of its template, else the default pool."""
    environment_pools = tuple(agent.name for agent in documents.environment.spec.agents)
    template_pools = tuple(agent.name for agent in documents.template.spec.agents)
    return environment_pools or template_pools or (DEFAULT_POOL,)


def overriding(layer: Layer, selected: frozenset[str]) -> Layer:
    """Environment-level layers set the resource's variables of the same name; they add none.

    A variable the EnvironmentTemplate aliases with selectors sets only what its selectors name.
    """
    if not selected or not any(variable.name in selected for variable in layer.variables):
        return Layer(layer.label, layer.variables, layer.source, layer.path, adds=False)
    kept = [(index, variable) for index, variable in enumerate(layer.variables) if variable.name not in selected]
    paths = tuple(layer.value_path(index, variable.name) for index, variable in kept)
    return Layer(
        layer.label, [variable for _, variable in kept], layer.source, layer.path, adds=False, value_paths=paths
    )
