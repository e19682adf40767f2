"""Each phase of a compilation on its own: it takes the frozen value of the phase before and
returns its own, leaving what it was given as it was."""

from __future__ import annotations

import copy
import dataclasses

import msgspec
import pytest
from template_support import BASE, mutate

from trellis_templates.bundle import Bundle
from trellis_templates.compilation import RunInfo
from trellis_templates.compiler import compile_bundle
from trellis_templates.errors import Problems
from trellis_templates.graph import assemble, build_resources, declared_dependencies, order_resources
from trellis_templates.loader import load_text
from trellis_templates.planning import plan_resources
from trellis_templates.resolved import Documents, resolve_documents
from trellis_templates.scope import Variables, resolve_variables
from trellis_templates.validate import parse_documents

DEPLOY = RunInfo(action="deploy", run_id="r-1")

# The app resource also reads an output of vpc, and vpc's template attaches a context of its own.
READS_OUTPUT = mutate(
    (
        "      dependsOn: [{name: vpc}]\n",
        "      variables: [{name: vpc_id, value: '$(resource.vpc.output.id.value)$'}]\n",
    ),
    ("  provider: opentofu\n", "  provider: opentofu\n  contexts: [{name: vpc-only}]\n"),
    (
        "kind: ConfigContext\nmetadata: {name: aws-creds}\n",
        "kind: ConfigContext\nmetadata: {name: vpc-only}\nspec:\n  variables: [{name: zone, value: a}]\n"
        "---\napiVersion: trellis.dev/v1\nkind: ConfigContext\nmetadata: {name: aws-creds}\n",
    ),
)


def documents_of(text: str, problems: Problems, environment: str = "dev") -> Documents | None:
    docs = parse_documents(load_text(text, "bundle.yaml", problems), problems)
    bundle = Bundle.index(docs, problems)
    found = bundle.environment(environment, problems)
    assert found is not None, problems.errors
    return resolve_documents(bundle, found[0], found[1], problems)


def variables_of(text: str, problems: Problems, info: RunInfo = DEPLOY) -> Variables:
    documents = documents_of(text, problems)
    assert documents is not None, problems.errors
    return resolve_variables(documents, inputs={}, info=info, problems=problems)


def test_resolving_documents_finds_the_template_and_the_contexts_it_attaches() -> None:
    problems = Problems()
    documents = documents_of(BASE, problems)
    assert documents is not None
    assert not problems.errors
    assert documents.template.metadata.name == "web-stack"
    assert [c.name for c in documents.template_contexts] == ["aws-creds"]
    assert documents.environment_contexts == ()


def test_resolving_documents_reports_a_missing_template_and_gives_none() -> None:
    problems = Problems()
    text = mutate(("  template: {name: web-stack}\n", "  template: {name: web-stak}\n"))
    assert documents_of(text, problems) is None
    assert [p.message for p in problems.errors] == ["EnvironmentTemplate 'web-stak' not found in the bundle"]


def test_resolving_variables_renders_the_environments_values_into_its_scope() -> None:
    problems = Problems()
    variables = variables_of(BASE, problems)
    assert not problems.errors
    assert variables.values == {"team": "a-team"}
    assert variables.scope["environment"]["variables"] == {"team": "a-team"}
    assert variables.scope["run"] == {"id": "r-1", "action": "deploy", "requested_by": ""}
    assert not variables.late
    assert variables.sensitive == frozenset()


def test_a_missing_required_variable_is_reported_by_the_variables_phase_alone() -> None:
    problems = Problems()
    variables_of(mutate(("    - {name: team, value: a-team}\n", "    - {name: team}\n")), problems)
    message = "required variable 'team' has no value (declared by EnvironmentTemplate 'web-stack')"
    assert [p.message for p in problems.errors] == [message]


def test_planning_resources_leaves_the_variables_it_was_given_as_they_were() -> None:
    problems = Problems()
    variables = variables_of(READS_OUTPUT, problems)
    scope_before = copy.deepcopy(variables.scope)
    planned = plan_resources(variables, info=DEPLOY, problems=problems)
    assert not problems.errors, problems.errors
    assert variables.scope == scope_before  # the template's own context is not written back
    assert set(variables.scope["context"]) == {"aws-creds"}
    # vpc's own context is in vpc's scope only, not in the workflow's every resource shares
    assert set(planned.scope["context"]) == {"aws-creds"}
    assert set(planned.plans[0].ctx.renderer.scope["context"]) == {"aws-creds", "vpc-only"}
    assert set(planned.plans[1].ctx.renderer.scope["context"]) == {"aws-creds"}
    assert [plan.name for plan in planned.plans] == ["vpc", "app"]
    assert planned.plans[0].ctx.inputs["region"] == "eu-west-1"


def test_ordering_puts_a_resource_after_the_one_whose_outputs_it_reads() -> None:
    problems = Problems()
    variables = variables_of(READS_OUTPUT, problems)
    planned = plan_resources(variables, info=DEPLOY, problems=problems)
    documents = variables.documents
    dependencies = declared_dependencies(documents.template, documents.template_source, problems)
    assert dependencies.declared == {"vpc": (), "app": ()}  # nothing written in dependsOn
    built = build_resources(planned, "deploy")
    assert built.reads["app"] == ("vpc",)
    order = order_resources(dependencies, planned, built, problems)
    assert order is not None
    assert not problems.errors
    assert order.names == ("vpc", "app")
    assert order.after == {"vpc": (), "app": ("vpc",)}


def test_ordering_reports_a_cycle_and_gives_none() -> None:
    problems = Problems()
    text = mutate(("    - name: vpc\n", "    - name: vpc\n      dependsOn: [{name: app}]\n"))
    variables = variables_of(text, problems)
    planned = plan_resources(variables, info=DEPLOY, problems=problems)
    documents = variables.documents
    dependencies = declared_dependencies(documents.template, documents.template_source, problems)
    order = order_resources(dependencies, planned, build_resources(planned, "deploy"), problems)
    assert order is None
    assert [p.message for p in problems.errors] == ["dependency cycle: vpc → app → vpc"]


def test_an_unknown_dependency_is_reported_by_the_dependencies_phase_alone() -> None:
    problems = Problems()
    documents = documents_of(mutate(("dependsOn: [{name: vpc}]", "dependsOn: [{name: vcp}]")), problems)
    assert documents is not None
    dependencies = declared_dependencies(documents.template, documents.template_source, problems)
    assert dependencies.declared["app"] == ()
    assert [(p.message, p.hint) for p in problems.errors] == [
        ("unknown resource 'vcp' in dependsOn", 'did you mean "vpc"?')
    ]


@pytest.mark.parametrize("action", ["deploy", "destroy"])
def test_the_phases_called_one_by_one_give_the_workflow_compile_bundle_gives(action: str) -> None:
    problems = Problems()
    info = RunInfo(action="deploy" if action == "deploy" else "destroy")
    variables = variables_of(BASE, problems, info)
    planned = plan_resources(variables, info=info, problems=problems)
    documents = variables.documents
    dependencies = declared_dependencies(documents.template, documents.template_source, problems)
    built = build_resources(planned, info.action)
    order = order_resources(dependencies, planned, built, problems)
    assert order is not None
    activities = assemble(planned, built, order, info=info, problems=problems)
    assert not problems.errors
    docs = parse_documents(load_text(BASE, "bundle.yaml", problems), problems)
    whole = compile_bundle(docs, "dev", {}, info.action).workflow
    assert whole is not None
    assert msgspec.json.encode(activities) == msgspec.json.encode(whole.activities)
    assert planned.scope == whole.scope


def test_every_phase_value_is_frozen() -> None:
    problems = Problems()
    variables = variables_of(BASE, problems)
    planned = plan_resources(variables, info=DEPLOY, problems=problems)
    for value in (DEPLOY, variables.documents, variables, planned):
        field = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, None)
