"""One compilation: its phases in order, each taking the frozen value of the one before
(`resolved`, `scope`, `planning`, `graph`); problems are collected, not raised."""

from __future__ import annotations

from collections.abc import Mapping

from trellis_core.workflow import Activity, TemplateRef, Workflow
from trellis_templates.action_compile import action_activities, check_all_actions, without_hooks
from trellis_templates.bundle import Bundle
from trellis_templates.documents import Document, Environment
from trellis_templates.errors import Problems, Source
from trellis_templates.expiring_hooks import expiring_hooks
from trellis_templates.graph import (
    assemble,
    build_resources,
    declared_dependencies,
    environment_hooks_context,
    order_resources,
)
from trellis_templates.outputs import check_plans
from trellis_templates.planning import Plans, plan_resources
from trellis_templates.resolved import RunInfo, resolve_documents
from trellis_templates.schedule_tasks import scheduled_task_activities
from trellis_templates.scope import resolve_variables
from trellis_templates.static import check_static_reads, resolve_statics

__all__ = ["RunInfo", "compile_environment"]


def compile_environment(
    *,
    bundle: Bundle,
    environment: Environment,
    environment_source: Source,
    inputs: Mapping[str, str],
    info: RunInfo,
    problems: Problems,
) -> Workflow | None:
    """The workflow of one environment, or None with the problems reported in `problems`."""
    documents = resolve_documents(bundle, environment, environment_source, problems)
    if documents is None:
        return None
    variables = resolve_variables(documents, inputs=inputs, info=info, problems=problems)
    planned = plan_resources(variables, info=info, problems=problems)
    statics = resolve_statics(variables, info=info, problems=problems)
    template_documents = [(documents.template, documents.template_source)]
    check_plans(planned.plans, [*template_documents, (environment, environment_source)], bundle, problems)
    resource_templates = {id(plan.template): (plan.template, plan.source) for plan in planned.plans}
    reading: list[tuple[Document, Source | None]] = [
        *template_documents,
        (environment, environment_source),
        *resource_templates.values(),
    ]
    check_static_reads(statics, reading, problems)
    dependencies = declared_dependencies(documents.template, documents.template_source, problems)
    check_all_actions(planned, problems)
    readers: dict[str, dict[str, tuple[str, ...]]] = {}
    if info.purpose.day2_action:
        activities = action_activities(planned, dependencies, info=info, problems=problems)
        if activities is None or problems.errors:
            return None
    elif info.purpose.expiring:
        activities = expiring_activities(planned, info=info, problems=problems)
        if activities is None or problems.errors:
            return None
    elif info.purpose.scheduled_tasks:
        activities = scheduled_task_activities(planned, dependencies, info=info, problems=problems)
        if activities is None or problems.errors:
            return None
    else:
        built = build_resources(planned, info.action, drift=info.purpose.drift)
        order = order_resources(dependencies, planned, built, problems)
        if order is None or problems.errors:
            return None
        activities = assemble(planned, built, order, info=info, problems=problems)
        if problems.errors:
            return None
        readers = built.readers
    if info.purpose.force:  # skips every hook and goes on past failures
        activities = without_hooks(activities)
    return Workflow(
        environment=environment.metadata.name,
        template=TemplateRef(name=documents.template.metadata.name, version=documents.template.spec.version),
        action=info.action,
        activities=activities,
        scope=planned.scope,
        # with a sealer, the request's variables as a later destroy may reuse them: sealed
        requested_variables=variables.inputs if info.seal is not None else {},
        purpose=info.purpose,
        continue_past_failure=info.purpose.force,
        static=statics.outputs,
        output_readers=readers,
    )


def expiring_activities(planned: Plans, *, info: RunInfo, problems: Problems) -> tuple[Activity, ...] | None:
    """An expiry notice's run: only the `onExpiring` hooks (no resource, no other hook); None with
    the problems reported (a template without any is one: nothing would run)."""
    documents = planned.variables.documents
    hooks = documents.template.spec.hooks.on_expiring
    if not hooks:
        problems.error(
            documents.template_source,
            ("spec", "hooks"),
            f"template {documents.template.metadata.name!r} has no onExpiring hooks: an expiry notice runs nothing",
            "add spec.hooks.onExpiring: [{name, type, options}]",
        )
        return None
    activities = expiring_hooks(environment_hooks_context(planned, info=info, problems=problems), hooks)
    return None if problems.errors else tuple(activities)
