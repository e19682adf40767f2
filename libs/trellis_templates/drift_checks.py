"""A drift check's activities: each resource planned without apply (or its custom `driftCheck`
task), no hooks, and the EnvironmentTemplate's `onDrift` hooks, skipped unless a check found drift.

What a check reports, as its activity's outputs (docs/drift.md): `driftChanges` ("yes"/"no"),
`driftResources` and `driftOutputs` (lists of names), `driftSummary` (text).
"""

from __future__ import annotations

import json

import msgspec

from trellis_core.workflow import Activity, RunWhen, SkipConfig
from trellis_templates.documents import Hook
from trellis_templates.hooks import HookContext, hook_activity
from trellis_templates.resources import ENTRY, Built, ResourcePlan, _checkout, _stages

CHECK_STAGE = "drift-check"  # the stage of a custom resource's driftCheck task
PLAN_STAGE = "plan"  # the stage of an OpenTofu/Terraform resource's drift plan
DRIFT_HOOKS_STAGE = "on-drift"
CHANGES = "driftChanges"  # the output saying whether a check found drift: "yes" or "no"
CHANGED_RESOURCES = "driftResources"  # the addresses (or names) of what differs
CHANGED_OUTPUTS = "driftOutputs"  # the resource's outputs whose values would change
SUMMARY = "driftSummary"


def build_drift_resource(plan: ResourcePlan) -> Built:
    """A resource's drift check: checkout, init and a drift plan; a custom resource's `driftCheck`
    task, or nothing (reported "not checked") when it defines none. No hook of the resource runs."""
    spec, built = plan.template.spec, Built()

    def extend(activities: list[Activity]) -> tuple[str, ...] | None:
        built.activities.extend(activities)
        built.main.extend(activity.id for activity in activities)
        return (activities[-1].id,) if activities else None

    tails: tuple[str, ...] = (ENTRY,)
    custom = spec.provider == "custom"
    if custom:
        tails = extend(_check_task(plan, tails)) or tails
    else:
        _no_check_task(plan)
        if spec.repository_options is not None:
            checkout = _checkout(plan, tails)
            tails = extend([checkout] if checkout is not None else []) or tails
        tails = _stages(plan, "deploy", tails, extend, drift=True)
    built.exits = tails
    return built


def check_drift_definition(plan: ResourcePlan) -> None:
    """Report a misplaced or ill-formed `driftCheck` in any compilation, not only in a drift check's."""
    custom = plan.template.spec.provider_options.custom
    if custom is None or custom.drift_check is None:
        return
    if plan.template.spec.provider != "custom":
        _no_check_task(plan)
    elif custom.drift_check.depends_on:
        _refuse_depends_on(plan)


def _refuse_depends_on(plan: ResourcePlan) -> None:
    plan.ctx.problems.error(
        plan.ctx.source,
        ("spec", "providerOptions", "custom", "driftCheck", "dependsOn"),
        "a driftCheck task runs alone: it cannot depend on the resource's tasks",
        "remove dependsOn; the check runs on the deployed resource, after the resources it comes after",
    )


def _check_task(plan: ResourcePlan, deps: tuple[str, ...]) -> list[Activity]:
    """The custom resource's `driftCheck` task, alone (it depends on no other task)."""
    ctx, custom = plan.ctx, plan.template.spec.provider_options.custom
    task = custom.drift_check if custom is not None else None
    if task is None:
        return []
    path = ("spec", "providerOptions", "custom", "driftCheck")
    if task.depends_on:
        _refuse_depends_on(plan)
        return []
    activity = hook_activity(ctx, task, path, f"resource/{plan.name}/{CHECK_STAGE}", stage=CHECK_STAGE,
                             depends_on=deps)
    return [activity] if activity is not None else []


def _no_check_task(plan: ResourcePlan) -> None:
    custom = plan.template.spec.provider_options.custom
    if custom is not None and custom.drift_check is not None:
        plan.ctx.problems.error(
            plan.ctx.source,
            ("spec", "providerOptions", "custom", "driftCheck"),
            f"driftCheck is for custom resources: a {plan.template.spec.provider} resource is checked with a plan",
            "remove driftCheck, or make the resource's provider custom",
        )


def checked_resources(activities: tuple[Activity, ...] | list[Activity]) -> dict[str, str]:
    """resource -> the id of the activity whose outputs say whether it drifted."""
    return {
        a.resource: a.id
        for a in activities
        if a.resource and (a.stage == CHECK_STAGE or (a.stage == PLAN_STAGE and getattr(a.spec, "drift", False)))
    }


def drift_hooks(
    context: HookContext, hooks: list[Hook], checks: dict[str, str], *, first_deps: tuple[str, ...]
) -> list[Activity]:
    """The `onDrift` hooks in order, after every check has ended, each skipped unless one found drift.

    Hooks that nothing could trigger (no resource is checked) are left out.
    """
    path = ("spec", "hooks", "onDrift")
    for index, hook in enumerate(hooks):
        if hook.skip_config is not None and hook.skip_config.condition:
            context.problems.error(
                context.source,
                (*path, index, "skipConfig", "condition"),
                "an onDrift hook runs only when a drift check found drift: it takes no skip condition",
            )
    if not checks or not hooks:
        return []
    condition = no_drift_condition(sorted(checks))
    out: list[Activity] = []
    deps: tuple[str, ...] = first_deps
    when: RunWhen = "always"  # every check has ended, drifted or failed
    seen: set[str] = set()
    for index, hook in enumerate(hooks):
        if hook.name in seen:
            context.problems.error(context.source, (*path, index, "name"),
                                   f"duplicate hook name {hook.name!r} in this list")
            continue
        seen.add(hook.name)
        activity = hook_activity(context, hook, (*path, index), f"environment/{DRIFT_HOOKS_STAGE}/{hook.name}",
                                 stage=DRIFT_HOOKS_STAGE, depends_on=deps, when=when)
        if activity is not None:
            out.append(msgspec.structs.replace(activity, skip=SkipConfig(condition=condition)))
            deps, when = (activity.id,), "success"
    return out


def no_drift_condition(resources: list[str]) -> str:
    """A skip condition that holds unless one of `resources` reported `changes: yes` (a check that
    failed or never ran reports nothing)."""
    found = " or ".join(
        f"({json.dumps(name)} in resource and resource[{json.dumps(name)}].output.get('{CHANGES}', {{}})"
        ".get('value') in ('yes', 'true', true))"
        for name in resources
    )
    return f"$(not ({found}))$"
