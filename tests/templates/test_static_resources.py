"""Static resources (docs/static-resources.md): outputs given, not produced, read downstream as any
resource's; every misuse reported at the field that has it."""

from __future__ import annotations

from collections.abc import Mapping

from template_support import FILE, only, position

from trellis_core.events import SourceFile
from trellis_core.workflow import ContainerSpec, StaticOutputs
from trellis_templates.compiler import CompileResult, compile_bundle
from trellis_templates.errors import Problems
from trellis_templates.loader import load_text
from trellis_templates.resolved import LinkedEnvironment
from trellis_templates.static import flatten_outputs, linked_environments
from trellis_templates.validate import parse_documents

BUNDLE = """\
apiVersion: eaas.envmgmt.io/v1
kind: StaticResource
metadata: {name: shared-db}
spec:
  variables:
    - {name: host, valueType: text, value: db.internal}
    - {name: port, valueType: json, value: 5433}
    - {name: owner, valueType: text, value: "$(environment.name)$-team"}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: db_host, value: '$(resource."shared-db".output.host.value)$'}
    - {name: vpc_id, value: '$(resource.network.output.vpc_id.value)$'}
  providerOptions:
    custom:
      tasks:
        - {name: show, type: script, options: {script: {script: "echo $TRELLIS_VAR_db_host"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  resources:
    - {name: shared-db, kind: resource, type: static}
    - {name: network, kind: environment, type: static}
    - {name: app, dependsOn: [{name: shared-db}]}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: stack}
"""

NETWORK = LinkedEnvironment(
    exists=True,
    deployed=True,
    outputs={"vpc": {"vpc_id": {"value": "vpc-42"}, "cidr": {"value": "10.0.0.0/16"}}},
)


def compile_text(
    text: str = BUNDLE,
    *,
    linked: Mapping[str, LinkedEnvironment] | None = None,
    action: str = "deploy",
    environment: str = "dev",
) -> CompileResult:
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    assert not problems.errors, [str(p) for p in problems.errors]
    return compile_bundle(docs, environment, {}, action, tenant="acme", linked=linked)  # type: ignore[arg-type]


def test_a_static_resource_runs_nothing_and_gives_its_variables_as_outputs() -> None:
    result = compile_text(linked={"network": NETWORK})
    assert result.ok, [str(p) for p in result.errors]
    assert result.workflow is not None
    assert [a.id for a in result.workflow.activities] == ["resource/app/task/show"]
    assert result.workflow.static["shared-db"] == StaticOutputs(
        kind="resource",
        outputs={"host": {"value": "db.internal"}, "port": {"value": 5433}, "owner": {"value": "dev-team"}},
    )


def test_an_environment_static_resource_gives_the_other_environments_outputs() -> None:
    result = compile_text(linked={"network": NETWORK})
    assert result.workflow is not None
    given = result.workflow.static["network"]
    assert given.kind == "environment"
    assert given.environment == "network"
    assert given.outputs == {"vpc_id": {"value": "vpc-42"}, "cidr": {"value": "10.0.0.0/16"}}


def test_without_a_state_store_an_environment_resource_is_left_to_the_run() -> None:
    result = compile_text(linked=None)
    assert result.ok, [str(p) for p in result.errors]
    assert result.workflow is not None
    assert result.workflow.static["network"] == StaticOutputs(kind="environment", environment="network")


def test_an_unknown_environment_is_an_error_at_the_resource_name() -> None:
    result = compile_text(linked={"netwrk": NETWORK})
    problem = only(result.errors, "spec.resources[1].name")
    assert "no environment 'network' of tenant 'acme'" in problem.message
    assert "netwrk" in problem.hint
    assert (problem.line, problem.column) == position(BUNDLE, "network, kind: environment")
    destroy = compile_text(linked={}, action="destroy")  # a destroy goes on with its last deploy's outputs
    assert destroy.ok, [str(p) for p in destroy.errors]
    assert any("no environment 'network'" in w.message for w in destroy.warnings)


def test_an_environment_never_deployed_is_an_error_for_a_deploy_and_a_warning_for_a_destroy() -> None:
    undeployed = {"network": LinkedEnvironment(exists=True, deployed=False)}
    deploy = compile_text(linked=undeployed)
    problem = only(deploy.errors, "spec.resources[1].name")
    assert "environment 'network' of tenant 'acme' is not deployed" in problem.message
    destroy = compile_text(linked=undeployed, action="destroy")
    assert destroy.ok, [str(p) for p in destroy.errors]
    assert any("last deploy" in w.message for w in destroy.warnings)


def test_reading_an_output_the_environment_does_not_have_names_what_it_has() -> None:
    text = BUNDLE.replace("output.vpc_id.value", "output.vpc_idd.value")
    result = compile_text(text, linked={"network": NETWORK})
    problem = only(result.errors, "spec.variables[1].value")
    assert "environment 'network' has no output 'vpc_idd'" in problem.message
    assert "cidr, vpc_id" in problem.message
    assert "vpc_id" in problem.hint


def test_reading_a_variable_the_static_resource_does_not_have_is_an_error() -> None:
    text = BUNDLE.replace("output.host.value", "output.hostname.value")
    result = compile_text(text, linked={"network": NETWORK})
    problem = only(result.errors, "spec.variables[0].value")
    assert "static resource 'shared-db' has no output 'hostname'" in problem.message
    assert "host, owner, port" in problem.message


def test_an_output_two_resources_of_the_environment_have_is_ambiguous() -> None:
    twice = LinkedEnvironment(
        exists=True,
        deployed=True,
        outputs={"a": {"vpc_id": {"value": 1}}, "b": {"vpc_id": {"value": 2}}},
    )
    result = compile_text(linked={"network": twice})
    problem = only(result.errors, "spec.variables[1].value")
    assert "ambiguous" in problem.message
    assert "a, b" in problem.message


def test_flattening_keeps_each_key_one_resource_has() -> None:
    outputs, ambiguous = flatten_outputs({"x": {"k": {"value": 1}, "same": {"value": 2}}, "y": {"same": {}}})
    assert outputs == {"k": {"value": 1}}
    assert ambiguous == {"same": ("x", "y")}


def test_what_cannot_apply_to_a_static_resource_is_an_error_at_its_field() -> None:
    text = BUNDLE.replace(
        "    - {name: shared-db, kind: resource, type: static}",
        "    - {name: shared-db, kind: resource, type: static, agents: [{name: pool}],\n"
        "       variables: [{name: x, value: y}], dependsOn: [{name: app}]}",
    )
    result = compile_text(text, linked={"network": NETWORK})
    for field, why in (("agents", "agent"), ("variables", "no variables"), ("dependsOn", "waits for nothing")):
        problem = only(result.errors, f"spec.resources[0].{field}")
        assert "static resource 'shared-db'" in problem.message
        assert why in problem.message


def test_a_resourcetemplate_cannot_be_static() -> None:
    text = BUNDLE.replace("    - {name: app, dependsOn", "    - {name: app, type: static, dependsOn")
    result = compile_text(text, linked={"network": NETWORK})
    assert "cannot be static" in only(result.errors, "spec.resources[2].type").message


def test_an_environment_cannot_read_itself() -> None:
    text = BUNDLE.replace("metadata: {name: dev}", "metadata: {name: network}")
    result = compile_text(text, linked={"network": NETWORK}, environment="network")
    assert "cannot read its own outputs" in only(result.errors, "spec.resources[1].name").message


def test_a_missing_static_resource_document_is_named_with_a_hint() -> None:
    text = BUNDLE.replace("metadata: {name: shared-db}", "metadata: {name: shared-dbs}")
    result = compile_text(text, linked={"network": NETWORK})
    problem = only(result.errors, "spec.resources[0].name")
    assert "StaticResource 'shared-db' not found" in problem.message
    assert "shared-dbs" in problem.hint


def test_a_static_resource_with_a_provider_or_hooks_is_refused_saying_why() -> None:
    text = BUNDLE.replace("spec:\n  variables:\n    - {name: host", "spec:\n  provider: opentofu\n  hooks: {}\n"
                          "  variables:\n    - {name: host", 1)
    problems = Problems()
    parse_documents(load_text(text, FILE, problems), problems)
    messages = {p.path: p.message for p in problems.errors}
    assert "runs nothing, so 'provider' cannot apply" in messages["spec.provider"]
    assert "runs nothing, so 'hooks' cannot apply" in messages["spec.hooks"]


def test_a_static_output_cannot_read_another_resources_outputs() -> None:
    text = BUNDLE.replace('value: "$(environment.name)$-team"', "value: '$(resource.app.output.x.value)$'")
    result = compile_text(text, linked={"network": NETWORK})
    assert any("unknown resource 'app'" in p.message for p in result.errors)


def test_a_sensitive_static_variable_is_sealed_and_marked_sensitive() -> None:
    text = BUNDLE.replace("value: db.internal}", "value: db.internal, options: {sensitive: true}}")
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    result = compile_bundle(docs, "dev", {}, "deploy", linked={"network": NETWORK}, seal=lambda s: f"sealed[{s}]")
    assert result.workflow is not None, [str(p) for p in result.errors]
    assert result.workflow.static["shared-db"].outputs["host"] == {"value": "sealed[db.internal]", "sensitive": True}


def test_the_compiler_service_asks_only_for_environments_the_template_reads() -> None:
    assert linked_environments([SourceFile(path=FILE, text=BUNDLE)], "dev") == ("network",)
    plain = BUNDLE.replace("kind: environment", "kind: resource")
    assert linked_environments([SourceFile(path=FILE, text=plain)], "dev") == ()
    assert linked_environments([SourceFile(path=FILE, text=BUNDLE)], "nope") == ()


def test_activities_never_carry_static_resources() -> None:
    result = compile_text(linked={"network": NETWORK}, action="destroy")
    assert result.workflow is not None
    assert all(a.resource == "app" for a in result.workflow.activities)
    assert all(isinstance(a.spec, ContainerSpec) for a in result.workflow.activities)
