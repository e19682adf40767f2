"""Day-2 actions of EnvironmentTemplates and ResourceTemplates: checked where they are declared,
found by name for a run, and compiled into a workflow that runs only that action
(docs/day2-actions.md)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

from trellis_core.workflow import Activity
from trellis_templates.checks import unique_names
from trellis_templates.documents import EnvironmentAction, EnvironmentTemplate, Hook, ResourceTemplate, Task
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.hooks import HookContext, hook_activity
from trellis_templates.resources import find_cycle, hook_chain, topo_order


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundAction:
    """The action a run asked for and where it is declared; `resource`: "" for one of the
    EnvironmentTemplate, else the resource whose ResourceTemplate declares it."""

    action: EnvironmentAction
    source: Source | None
    path: Path
    resource: str = ""

    @property
    def label(self) -> str:
        return f"{self.resource}.{self.action.name}" if self.resource else self.action.name


def check_actions(
    actions: Sequence[EnvironmentAction],
    source: Source,
    problems: Problems,
    *,
    resources: Sequence[str] | None = None,
) -> None:
    """What makes an action impossible to run, reported where it is written. `resources`: the
    EnvironmentTemplate's resources (None: the actions of a ResourceTemplate)."""
    unique_names([action.name for action in actions], source, ("spec", "actions"), "action", problems)
    for index, action in enumerate(actions):
        path: Path = ("spec", "actions", index)
        tasks = action.workflows.tasks if action.workflows is not None else []
        if action.type == "workflows" and not tasks:
            problems.error(
                source,
                (*path, "workflows"),
                f"action {action.name!r} of type workflows has no tasks",
                "give workflows.tasks: [{name, type, options}] (as a custom resource's tasks)",
            )
        if action.type != "workflows" and tasks:
            problems.error(
                source,
                (*path, "workflows"),
                f"action {action.name!r} of type {action.type} runs no tasks",
                "tasks belong to an action of type workflows",
            )
        if action.type != "deploy" and action.reconcile_resources:
            problems.error(
                source,
                (*path, "reconcileResources"),
                f"action {action.name!r} of type {action.type} deploys no resources",
                "reconcileResources belong to an action of type deploy",
            )
        if action.type == "deploy":
            _check_reconcile(action, source, path, resources, problems)


def _check_reconcile(
    action: EnvironmentAction, source: Source | None, path: Path, resources: Sequence[str] | None, problems: Problems
) -> None:
    where: Path = (*path, "reconcileResources")
    if resources is None:
        if action.reconcile_resources:
            problems.error(
                source,
                where,
                f"action {action.name!r} of a ResourceTemplate names reconcileResources",
                "it deploys its own resource again: leave reconcileResources out",
            )
        return
    if not action.reconcile_resources:
        problems.error(
            source,
            where,
            f"action {action.name!r} of type deploy names no reconcileResources",
            "list the resources it deploys again: reconcileResources: [{name: R}]",
        )
    seen: set[str] = set()
    for position, ref in enumerate(action.reconcile_resources):
        if ref.name not in resources:
            listed = ", ".join(resources) or "none"
            problems.error(
                source,
                (*where, position, "name"),
                f"action {action.name!r}: unknown resource {ref.name!r} in reconcileResources "
                f"(the template's resources: {listed})",
                closest(ref.name, resources),
            )
        elif ref.name in seen:
            problems.error(source, (*where, position, "name"), f"resource {ref.name!r} is listed twice")
        seen.add(ref.name)


def declared_actions(
    template: EnvironmentTemplate,
    template_source: Source | None,
    resources: Sequence[tuple[str, ResourceTemplate, Source | None]],
) -> list[FoundAction]:
    """Every action a run of the environment may name: the EnvironmentTemplate's, then each
    resource's template's (the same template under two resources: each resource's)."""
    out = [
        FoundAction(action=action, source=template_source, path=("spec", "actions", index))
        for index, action in enumerate(template.spec.actions)
    ]
    for resource, resource_template, source in resources:
        out += [
            FoundAction(action=action, source=source, path=("spec", "actions", index), resource=resource)
            for index, action in enumerate(resource_template.spec.actions)
        ]
    return out


def action_names(found: Sequence[FoundAction]) -> list[str]:
    """The names a run may give: an EnvironmentTemplate's action by its name, a resource's as
    `RESOURCE.ACTION` (and by its name alone when no other action has it)."""
    counts: dict[str, int] = {}
    for entry in found:
        counts[entry.action.name] = counts.get(entry.action.name, 0) + 1
    names: list[str] = []
    for entry in found:
        if (not entry.resource or counts[entry.action.name] == 1) and entry.action.name not in names:
            names.append(entry.action.name)
        if entry.resource:
            names.append(entry.label)
    return names


def action_labels(found: Sequence[FoundAction]) -> list[tuple[str, FoundAction]]:
    """Each action once, under the shortest name a run may give it (see `action_names`)."""
    counts: dict[str, int] = {}
    for entry in found:
        counts[entry.action.name] = counts.get(entry.action.name, 0) + 1
    own = {entry.action.name for entry in found if not entry.resource}
    return [
        (entry.action.name if not entry.resource or (counts[entry.action.name] == 1 and entry.action.name not in own)
         else entry.label, entry)
        for entry in found
    ]  # fmt: skip


def find_action(found: Sequence[FoundAction], name: str, environment: str, problems: Problems) -> FoundAction | None:
    """The action `name` names (see `action_names`), else None with the problem reported."""
    resource, dot, action = name.rpartition(".")
    if dot:
        matches = [entry for entry in found if entry.resource == resource and entry.action.name == action]
    else:
        own = [entry for entry in found if not entry.resource and entry.action.name == name]
        matches = own or [entry for entry in found if entry.action.name == name]
    if len(matches) == 1:
        return matches[0]
    names = action_names(found)
    if matches:
        labels = ", ".join(entry.label for entry in matches)
        problems.error(None, (), f"action {name!r} of environment {environment!r} is ambiguous: name one of {labels}")
        return None
    listed = f"its actions: {', '.join(names)}" if names else "its templates declare no actions"
    problems.error(None, (), f"environment {environment!r} has no action {name!r} ({listed})", closest(name, names))
    return None


def action_tasks(ctx: HookContext, found: FoundAction, *, first_deps: tuple[str, ...]) -> list[Activity]:
    """The tasks of an action of type `workflows` as activities, in dependency order."""
    assert found.action.workflows is not None
    tasks: dict[str, tuple[int, Task]] = {}
    path: Path = (*found.path, "workflows", "tasks")
    for index, task in enumerate(found.action.workflows.tasks):
        if task.name in tasks:
            ctx.problems.error(ctx.source, (*path, index, "name"), f"duplicate task name {task.name!r}")
        else:
            tasks[task.name] = (index, task)
    deps: dict[str, list[str]] = {name: [] for name in tasks}
    for name, (index, task) in tasks.items():
        for position, dep in enumerate(task.depends_on):
            if dep not in tasks or dep == name:
                why = f"unknown task {dep!r} in dependsOn" if dep != name else "a task cannot depend on itself"
                ctx.problems.error(ctx.source, (*path, index, "dependsOn", position), why, closest(dep, tasks))
            else:
                deps[name].append(dep)
    order = topo_order(list(tasks), deps)
    if order is None:
        cycle = find_cycle(list(tasks), deps)
        ctx.problems.error(
            ctx.source, (*path, tasks[cycle[0]][0], "dependsOn"), "task dependency cycle: " + " → ".join(cycle)
        )
        return []
    prefix = f"action/{found.action.name}/task"
    out: list[Activity] = []
    for name in order:
        index, task = tasks[name]
        task_deps = tuple(f"{prefix}/{dep}" for dep in deps[name]) or first_deps
        activity = hook_activity(ctx, task, (*path, index), f"{prefix}/{name}", stage="task", depends_on=task_deps)
        if activity is not None:
            out.append(activity)
    return out


def with_action_variables(ctx: HookContext, found: FoundAction, inputs: dict[str, str]) -> HookContext:
    """`ctx` with the action's own variables: each one's value, or the run's of that name, in
    `variables.X` and TRELLIS_VAR_X; a required one with no value is an error."""
    values: dict[str, object] = {}
    sensitive: list[str] = []
    for index, variable in enumerate(found.action.variables):
        path: Path = (*found.path, "variables", index, "value")
        value = inputs.get(variable.name, variable.value)
        if value is None:
            if variable.options.required:
                ctx.problems.error(
                    found.source,
                    path,
                    f"action {found.action.name!r} needs variable {variable.name!r}",
                    f"give it with the run: --var {variable.name}=VALUE",
                )
            continue
        if isinstance(value, str):
            value = ctx.renderer.text(value, found.source, path)
            if variable.options.sensitive and ctx.sealer is not None:
                value = ctx.sealer.text(value, f"variable {variable.name!r}", found.source, path)
        if variable.options.sensitive:
            sensitive += [variable.name, f"TRELLIS_VAR_{variable.name}"]
        values[variable.name] = value
    if not values:
        return ctx
    env = {f"TRELLIS_VAR_{name}": v if isinstance(v, str) else json.dumps(v) for name, v in values.items()}
    inputs_scope = {**ctx.inputs, **values}
    renderer = dataclasses.replace(ctx.renderer, scope={**ctx.renderer.scope, "variables": inputs_scope})
    return dataclasses.replace(
        ctx,
        renderer=renderer,
        inputs=inputs_scope,
        env={**ctx.env, **env},
        sensitive=tuple(sorted({*ctx.sensitive, *sensitive})),
    )


def action_hooks(
    ctx: HookContext, found: FoundAction, key: str, *, first_deps: tuple[str, ...], first_when: str = "success"
) -> list[Activity]:
    """One of the action's hook lists: `hooks.<key>`, ids `action/<name>/<stage>/<hook>`."""
    stage = {
        "onInit": "on-init",
        "onSuccess": "on-success",
        "onFailure": "on-failure",
        "onCompletion": "on-completion",
    }[key]
    hooks: Sequence[Hook] = getattr(found.action.hooks, _snake(key))
    return hook_chain(
        ctx,
        hooks,
        path=(*found.path, "hooks", key),
        prefix=f"action/{found.action.name}/{stage}",
        stage=stage,
        first_deps=first_deps,
        first_when=first_when,  # type: ignore[arg-type]
    )


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
