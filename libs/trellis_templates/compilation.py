"""One compilation: its phases in order, each taking the frozen value of the one before
(`resolved`, `scope`, `planning`, `graph`); problems are collected, not raised."""

from __future__ import annotations

from collections.abc import Mapping

from trellis_core.workflow import TemplateRef, Workflow
from trellis_templates.bundle import Bundle
from trellis_templates.documents import Environment
from trellis_templates.errors import Problems, Source
from trellis_templates.graph import assemble, build_resources, declared_dependencies, order_resources
from trellis_templates.outputs import check_plans
from trellis_templates.planning import plan_resources
from trellis_templates.resolved import RunInfo, resolve_documents
from trellis_templates.scope import resolve_variables

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
    template_documents = [(documents.template, documents.template_source)]
    check_plans(planned.plans, [*template_documents, (environment, environment_source)], bundle, problems)
    dependencies = declared_dependencies(documents.template, documents.template_source, problems)
    built = build_resources(planned, info.action, drift=info.purpose.drift)
    order = order_resources(dependencies, planned, built, problems)
    if order is None or problems.errors:
        return None
    activities = assemble(planned, built, order, info=info, problems=problems)
    if problems.errors:
        return None
    return Workflow(
        environment=environment.metadata.name,
        template=TemplateRef(name=documents.template.metadata.name, version=documents.template.spec.version),
        action=info.action,
        activities=activities,
        scope=planned.scope,
        # with a sealer, the request's variables as a later destroy may reuse them: sealed
        requested_variables=variables.inputs if info.seal is not None else {},
        purpose=info.purpose,
        output_readers=built.readers,
    )
