"""Phases 4 to 6 of a compilation: the resources' dependencies, each resource built into its
activities, the resources in order, and the DAG assembled between the environment's hooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from trellis_core.workflow import Action, Activity, RunWhen
from trellis_templates.documents import EnvironmentResource, EnvironmentTemplate, Hook
from trellis_templates.drift_checks import (
    build_drift_resource,
    check_drift_definition,
    checked_resources,
    drift_hooks,
)
from trellis_templates.drift_impact import Readers, output_readers
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.expiring_hooks import expiring_hooks
from trellis_templates.hooks import HookContext, env_for
from trellis_templates.planning import Plans, environment_agents
from trellis_templates.rendering import Renderer
from trellis_templates.resolved import RunInfo
from trellis_templates.resources import ENTRY, Built, build_resource, find_cycle, hook_chain, topo_order
from trellis_templates.variables import env_encoding


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependencies:
    """Every resource of the EnvironmentTemplate (the first of a name) and what its dependsOn names."""

    template_source: Source
    entries: Mapping[str, tuple[int, EnvironmentResource]]
    declared: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltResources:
    """Each planned resource's activities, and the resources whose outputs its strings read."""

    built: Mapping[str, Built]
    reads: Mapping[str, tuple[str, ...]]
    # a drift check's: every resource -> output -> the resources that read it when deployed
    readers: Readers = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    """The planned resources in dependency order, and what each waits for (deploy order)."""

    names: tuple[str, ...]
    after: Mapping[str, tuple[str, ...]]


def declared_dependencies(template: EnvironmentTemplate, source: Source, problems: Problems) -> Dependencies:
    """The dependsOn lists, checked: unknown resources and a resource depending on itself reported."""
    resources = template.spec.resources
    entries = {entry.name: (index, entry) for index, entry in reversed(list(enumerate(resources)))}
    declared: dict[str, list[str]] = {name: [] for name in entries}
    for name, (index, entry) in entries.items():
        for position, dependency in enumerate(entry.depends_on):
            path = ("spec", "resources", index, "dependsOn", position, "name")
            if dependency.name not in entries:
                message = f"unknown resource {dependency.name!r} in dependsOn"
                problems.error(source, path, message, closest(dependency.name, entries))
            elif dependency.name == name:
                problems.error(source, path, f"resource {name!r} depends on itself")
            elif dependency.name not in declared[name]:
                declared[name].append(dependency.name)
    return Dependencies(
        template_source=source,
        entries=entries,
        declared={name: tuple(names) for name, names in declared.items()},
    )


def build_resources(planned: Plans, action: Action, *, drift: bool = False) -> BuiltResources:
    """Every planned resource's activities: its hooks, checkout and stages or tasks (a drift
    check's: `drift_checks`)."""
    built: dict[str, Built] = {}
    reads: dict[str, tuple[str, ...]] = {}
    deployed: list[Activity] = []
    for plan in planned.plans:
        if drift:  # the deploy's activities say who reads which outputs; the check runs its own
            deployed.extend(build_resource(plan, "deploy").activities)
        else:
            check_drift_definition(plan)
        built[plan.name] = build_drift_resource(plan) if drift else build_resource(plan, action)
        reads[plan.name] = tuple(plan.ctx.renderer.refs)  # complete once every string is rendered
    if drift and planned.plans:  # both builds rendered the same strings: each problem once
        problems = planned.plans[0].ctx.problems
        problems.errors[:] = list(dict.fromkeys(problems.errors))
        problems.warnings[:] = list(dict.fromkeys(problems.warnings))
    readers: Readers = {plan.name: {} for plan in planned.plans} | output_readers(deployed) if drift else {}
    return BuiltResources(built=built, reads=reads, readers=readers)


def order_resources(
    dependencies: Dependencies, planned: Plans, built: BuiltResources, problems: Problems
) -> Order | None:
    """Resources in dependency order (declaration order breaks ties); None with a cycle reported.

    A resource also comes after those whose outputs its strings read. Cycles are looked for among
    every resource of the template, also those whose template could not be found (already
    reported), so one run reports both.
    """
    entries = dependencies.entries
    deps = {name: list(names) for name, names in dependencies.declared.items()}
    for plan in planned.plans:
        for ref in built.reads[plan.name]:
            if ref != plan.name and ref in deps and ref not in deps[plan.name]:
                deps[plan.name].append(ref)
    names = sorted(entries, key=lambda name: entries[name][0])
    order = topo_order(names, deps)
    if order is None:
        cycle = find_cycle(names, deps)
        first_index, first = entries[cycle[0]]
        at = next((k for k, dependency in enumerate(first.depends_on) if dependency.name == cycle[1]), None)
        where: Path = ("spec", "resources", first_index) + (("dependsOn", at) if at is not None else ())
        problems.error(dependencies.template_source, where, "dependency cycle: " + " → ".join(cycle))
        return None
    planned_names = [plan.name for plan in planned.plans]
    if len(planned_names) == len(names):  # every resource planned: the order is the same
        return Order(names=tuple(order), after={name: tuple(after) for name, after in deps.items()})
    kept = set(planned_names)
    after = {name: [dependency for dependency in deps[name] if dependency in kept] for name in planned_names}
    kept_order = topo_order(planned_names, after)
    assert kept_order is not None  # a subgraph of an acyclic graph
    return Order(names=tuple(kept_order), after={name: tuple(deps) for name, deps in after.items()})


def environment_hooks_context(planned: Plans, *, info: RunInfo, problems: Problems) -> HookContext:
    """What the environment's own hooks get: its variables, as text, and the final scope."""
    variables = planned.variables
    documents, values, sensitive = variables.documents, variables.values, variables.sensitive
    env = {"TRELLIS_ACTION": info.action} | env_for(
        {name: env_encoding(value, "text") for name, value in values.items()}, tf=False
    )
    renderer = Renderer(
        problems,
        {**planned.scope, "variables": values},
        variables.resource_names,
        late_variables=variables.late,
        late_environment=variables.late,
        contexts=variables.visible_contexts,
        late_contexts=variables.visible_contexts,
    )
    return HookContext(
        bundle=documents.bundle,
        problems=problems,
        renderer=renderer,
        source=documents.template_source,
        resource="",
        agents=environment_agents(documents),
        inputs=values,
        sensitive=tuple(sorted(sensitive | {f"TRELLIS_VAR_{name}" for name in sensitive})),
        env=env,
        action=info.action,
        email_relay_url=info.email_relay_url,
        sealer=variables.sealer,
    )


def assemble(
    planned: Plans, built: BuiltResources, order: Order, *, info: RunInfo, problems: Problems
) -> tuple[Activity, ...]:
    """The workflow's activities: the environment's onInit hooks, each resource after those it
    waits for (destroy: after those that wait for it), then onSuccess, onFailure, onCompletion."""
    context = environment_hooks_context(planned, info=info, problems=problems)
    hooks = planned.variables.documents.template.spec.hooks
    if info.purpose.drift:  # no hook but onDrift, after every check
        return _drift_assembled(context, built, order, hooks.on_drift)
    drift_hooks(context, hooks.on_drift, {"": ""}, first_deps=())  # checked here too, run by drift checks only
    expiring_hooks(context, hooks.on_expiring)  # checked here too, run by expiry notices only
    out = _environment_hooks(context, hooks.on_init, "onInit", "on-init", first_deps=())
    start = (out[-1].id,) if out else ()
    names, preds = _in_action_order(order, info.action)
    exits: dict[str, tuple[str, ...]] = {}
    failure_hooks: set[str] = set()
    for name in names:
        resource = built.built[name]
        entry = tuple(dict.fromkeys(exit_id for pred in preds[name] for exit_id in exits[pred])) or start
        out.extend(resolve_entry(activity, entry) for activity in resource.activities)
        exits[name] = swap_entry(resource.exits, entry)
        failure_hooks.update(resource.failure_hooks)
    resource_ids = [activity.id for activity in out]
    success_deps = tuple(dict.fromkeys(exit_id for name in names for exit_id in exits[name])) or start
    out += _environment_hooks(context, hooks.on_success, "onSuccess", "on-success", first_deps=success_deps)
    failure_deps = tuple(activity_id for activity_id in resource_ids if activity_id not in failure_hooks)
    out += _environment_hooks(
        context, hooks.on_failure, "onFailure", "on-failure", first_deps=failure_deps, first_when="failure"
    )
    every = tuple(activity.id for activity in out)
    out += _environment_hooks(
        context, hooks.on_completion, "onCompletion", "on-completion", first_deps=every, first_when="always"
    )
    return tuple(out)


def _drift_assembled(
    context: HookContext, built: BuiltResources, order: Order, on_drift: list[Hook]
) -> tuple[Activity, ...]:
    out: list[Activity] = []
    exits: dict[str, tuple[str, ...]] = {}
    for name in order.names:
        entry = tuple(dict.fromkeys(exit_id for pred in order.after[name] for exit_id in exits[pred]))
        out.extend(resolve_entry(activity, entry) for activity in built.built[name].activities)
        exits[name] = swap_entry(built.built[name].exits, entry)
    ends = tuple(dict.fromkeys(exit_id for name in order.names for exit_id in exits[name]))
    return (*out, *drift_hooks(context, on_drift, checked_resources(out), first_deps=ends))


def _environment_hooks(
    context: HookContext,
    hooks: Sequence[Hook],
    key: str,
    stage: str,
    *,
    first_deps: tuple[str, ...],
    first_when: RunWhen = "success",
) -> list[Activity]:
    """One of the EnvironmentTemplate's hook lists: `spec.hooks.<key>`, ids `environment/<stage>/<hook>`."""
    path: Path = ("spec", "hooks", key)
    return hook_chain(
        context,
        hooks,
        path=path,
        prefix=f"environment/{stage}",
        stage=stage,
        first_deps=first_deps,
        first_when=first_when,
    )


def _in_action_order(order: Order, action: Action) -> tuple[list[str], Mapping[str, tuple[str, ...]]]:
    """Deploy: the order as it is; destroy: reversed, a resource after those that depend on it."""
    if action != "destroy":
        return list(order.names), order.after
    names = list(reversed(order.names))
    preds: dict[str, list[str]] = {name: [] for name in names}
    for later in names:
        for earlier in order.after[later]:
            preds[earlier].append(later)
    return names, {name: tuple(pred) for name, pred in preds.items()}


def swap_entry(ids: tuple[str, ...], entry: tuple[str, ...]) -> tuple[str, ...]:
    """`ids` with ENTRY replaced by the ids it stands for."""
    out: list[str] = []
    for activity_id in ids:
        out.extend(entry if activity_id == ENTRY else (activity_id,))
    return tuple(dict.fromkeys(out))


def resolve_entry(act: Activity, entry: tuple[str, ...]) -> Activity:
    if ENTRY not in act.depends_on:
        return act
    return msgspec.structs.replace(act, depends_on=swap_entry(act.depends_on, entry))
