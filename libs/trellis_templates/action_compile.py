"""The activities of a day-2 action run (RunPurpose.day2_action): only the asked action, between
its own hooks; and of a force-destroy: the destroy without a single hook (docs/day2-actions.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import msgspec

from trellis_core.workflow import Activity
from trellis_templates.actions import (
    FoundAction,
    action_hooks,
    action_tasks,
    check_actions,
    declared_actions,
    find_action,
    with_action_variables,
)
from trellis_templates.bundle import Bundle
from trellis_templates.documents import Document
from trellis_templates.errors import Problems, Source
from trellis_templates.graph import (
    BuiltResources,
    Dependencies,
    environment_hooks_context,
    order_resources,
    resolve_entry,
    swap_entry,
)
from trellis_templates.hooks import HookContext
from trellis_templates.planning import Plans, find_template
from trellis_templates.resolved import RunInfo, resolve_documents
from trellis_templates.resources import build_resource
from trellis_templates.validate import SourceDocument

HOOK_STAGES = frozenset({"on-init", "on-success", "on-failure", "on-completion"})


def check_all_actions(planned: Plans, problems: Problems) -> None:
    """Every action of the EnvironmentTemplate and of its resources' templates (each template once)."""
    documents = planned.variables.documents
    template = documents.template
    names = [resource.name for resource in template.spec.resources]
    check_actions(template.spec.actions, documents.template_source, problems, resources=names)
    seen: set[int] = set()
    for plan in planned.plans:
        if id(plan.template) not in seen:
            seen.add(id(plan.template))
            check_actions(plan.template.spec.actions, plan.source or Source(), problems)


def action_activities(
    planned: Plans, dependencies: Dependencies, *, info: RunInfo, problems: Problems
) -> tuple[Activity, ...] | None:
    """The action's hooks around its tasks (type `workflows`) or its resources' deploy (type
    `deploy`); None with the problems reported (an unknown action lists the defined ones)."""
    documents = planned.variables.documents
    resources = [(plan.name, plan.template, plan.source) for plan in planned.plans]
    found_actions = declared_actions(documents.template, documents.template_source, resources)
    found = find_action(found_actions, info.purpose.day2_action, documents.environment.metadata.name, problems)
    if found is None:
        return None
    return found_action_activities(planned, dependencies, found, info=info, problems=problems)


def found_action_activities(
    planned: Plans, dependencies: Dependencies, found: FoundAction, *, info: RunInfo, problems: Problems
) -> tuple[Activity, ...] | None:
    """The activities of `found` (an action, or a `workflows` schedule's tasks as one); None with
    the problems reported."""
    environment = planned.variables.documents.environment.metadata.name
    if found.action.type == "destroy":
        problems.error(
            found.source,
            (*found.path, "type"),
            f"action {found.label!r} is of type destroy: a day-2 action does not destroy",
            f"destroy the environment instead: trellis env destroy {environment}",
        )
        return None
    ctx = with_action_variables(_context(planned, found, info, problems), found, planned.variables.inputs)
    init = action_hooks(ctx, found, "onInit", first_deps=())
    start = (init[-1].id,) if init else ()
    if found.action.type == "workflows":
        main = action_tasks(ctx, found, first_deps=start)
        depended = {dep for activity in main for dep in activity.depends_on}
        exits = tuple(activity.id for activity in main if activity.id not in depended) or start
    else:
        main, exits = _reconcile(planned, dependencies, found, start, problems)
    success = action_hooks(ctx, found, "onSuccess", first_deps=exits)
    main_ids = tuple(activity.id for activity in main) or start
    failure = action_hooks(ctx, found, "onFailure", first_deps=main_ids, first_when="failure")
    success_tail = (success[-1].id,) if success else exits
    ends = tuple(dict.fromkeys((*success_tail, *((failure[-1].id,) if failure else ()))))
    completion = action_hooks(ctx, found, "onCompletion", first_deps=ends, first_when="always")
    if problems.errors:
        return None
    return tuple(init + main + success + failure + completion)


def _context(planned: Plans, found: FoundAction, info: RunInfo, problems: Problems) -> HookContext:
    """A resource's action runs as that resource's hooks do; an EnvironmentTemplate's as the
    environment's hooks, its outputs kept under the action's name (`resource.<action>.output`)."""
    if found.resource:
        return next(plan.ctx for plan in planned.plans if plan.name == found.resource)
    ctx = environment_hooks_context(planned, info=info, problems=problems)
    name = found.action.name
    renderer = dataclasses.replace(ctx.renderer, resources=ctx.renderer.resources | {name}, refs={})
    return dataclasses.replace(ctx, resource=name, renderer=renderer)


def _reconcile(
    planned: Plans, dependencies: Dependencies, found: FoundAction, start: tuple[str, ...], problems: Problems
) -> tuple[list[Activity], tuple[str, ...]]:
    """The deploy of only the resources the action names, in dependency order among themselves
    (the others' outputs are read from the environment's last deploy)."""
    names = {ref.name for ref in found.action.reconcile_resources} or {found.resource}
    chosen = tuple(plan for plan in planned.plans if plan.name in names)
    built = {plan.name: build_resource(plan, "deploy") for plan in chosen}
    reads = {plan.name: tuple(plan.ctx.renderer.refs) for plan in chosen}
    order = order_resources(
        dependencies, dataclasses.replace(planned, plans=chosen), BuiltResources(built=built, reads=reads), problems
    )
    if order is None:
        return [], start
    out: list[Activity] = []
    exits: dict[str, tuple[str, ...]] = {}
    for name in order.names:
        entry = tuple(dict.fromkeys(exit_id for pred in order.after[name] for exit_id in exits[pred])) or start
        out.extend(resolve_entry(activity, entry) for activity in built[name].activities)
        exits[name] = swap_entry(built[name].exits, entry)
    return out, tuple(dict.fromkeys(exit_id for name in order.names for exit_id in exits[name])) or start


def environment_actions(
    documents: Sequence[SourceDocument | Document], environment_name: str
) -> tuple[list[FoundAction], Problems]:
    """Every action a run of the environment may name (see `actions.action_names`), without
    compiling; the problems that kept some from being found (a missing template...)."""
    problems = Problems()
    bundle = Bundle.index(documents, problems)
    found = bundle.environment(environment_name, problems)
    resolved = resolve_documents(bundle, found[0], found[1], problems) if found is not None else None
    if resolved is None:
        return [], problems
    resources = []
    for index, entry in enumerate(resolved.template.spec.resources):
        if (template := find_template(resolved, index, entry, problems)) is not None:
            resources.append((entry.name, template.template, template.source))
    return declared_actions(resolved.template, resolved.template_source, resources), problems


def is_hook(activity: Activity) -> bool:
    """An environment, resource or provider-stage hook (a custom resource's task is not one)."""
    parts = activity.id.split("/")
    stage_hook = len(parts) == 5 and parts[0] == "resource" and parts[3] in ("before", "after")
    return activity.stage in HOOK_STAGES or stage_hook


def without_hooks(activities: Sequence[Activity]) -> tuple[Activity, ...]:
    """A force-destroy's activities: every hook dropped, what waited for one now waits for what
    the hook waited for (the activities are in topological order)."""
    through: dict[str, tuple[str, ...]] = {}
    out: list[Activity] = []
    for activity in activities:
        deps = tuple(dict.fromkeys(d for dep in activity.depends_on for d in through.get(dep, (dep,))))
        if is_hook(activity):
            through[activity.id] = deps
            continue
        out.append(msgspec.structs.replace(activity, depends_on=deps) if deps != activity.depends_on else activity)
    return tuple(out)
