"""Day-2 actions and force-destroy in the compiler: what an action run compiles to, what is
checked where actions are written, and what a force-destroy drops."""

from __future__ import annotations

from collections.abc import Mapping

from template_support import FILE

from trellis_core.workflow import ContainerSpec, IacSpec, RunPurpose, Workflow
from trellis_templates.compiler import CompileResult, compile_bundle
from trellis_templates.errors import Problems
from trellis_templates.expressions import LATE
from trellis_templates.loader import load_text
from trellis_templates.validate import parse_documents

VPC = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: vpc}
spec:
  provider: opentofu
  hooks:
    onInit: [{name: hello, type: script, options: {script: {script: "echo hello"}}}]
    onFailure: [{name: alarm, type: script, options: {script: {script: "echo alarm"}}}]
    provider:
      openTofu:
        destroy:
          destroy: {before: [{name: drain, type: script, options: {script: {script: "echo drain"}}}]}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: db}
spec:
  provider: opentofu
  variables: [{name: size, value: small}]
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{name: start, type: script, options: {script: {script: "echo start"}}}]
  actions:
    - name: restart
      type: workflows
      workflows:
        tasks:
          - {name: bounce, type: script, options: {script: {script: "echo bounce $(resource.app.output.url.value)$"}}}
    - name: rotate
      type: workflows
      workflows:
        tasks: [{name: again, type: script, options: {script: {script: "echo again"}}}]
"""

STACK = """\
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  resources:
    - name: vpc
    - name: db
      dependsOn: [{name: vpc}]
    - name: app
      dependsOn: [{name: db}]
  hooks:
    onInit: [{name: hi, type: http, options: {http: {endpoint: "https://h"}}}]
    onCompletion: [{name: bye, type: http, options: {http: {endpoint: "https://h"}}}]
  actions:
    - name: rotate
      type: workflows
      description: rotate the database password
      variables: [{name: reason, value: routine}]
      hooks:
        onSuccess: [{name: tell, type: http, options: {http: {endpoint: "https://chat"}}}]
      workflows:
        tasks:
          - name: read
            type: script
            options: {script: {script: "echo $(resource.db.output.host.value)$ $(variables.reason)$"}}
          - name: write
            type: script
            dependsOn: [read]
            options: {script: {script: "echo done"}}
    - name: resize
      type: deploy
      reconcileResources: [{name: db}, {name: app}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: stack}
"""

BUNDLE = VPC + STACK


def compile_run(
    text: str = BUNDLE,
    *,
    purpose: RunPurpose = RunPurpose(),
    action: str = "deploy",
    inputs: Mapping[str, str] | None = None,
) -> CompileResult:
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    assert not problems.errors, [str(e) for e in problems.errors]
    return compile_bundle(docs, "dev", inputs or {}, action, purpose=purpose, strict_inputs=True)  # type: ignore[arg-type]


def action_workflow(name: str, **inputs: str) -> Workflow:
    result = compile_run(purpose=RunPurpose(day2_action=name), inputs=inputs)
    assert result.workflow is not None, [str(e) for e in result.errors]
    return result.workflow


def messages(result: CompileResult) -> list[str]:
    return [f"{e.path}: {e.message}" for e in result.errors]


def test_an_action_of_type_workflows_compiles_to_only_its_tasks_between_its_hooks() -> None:
    workflow = action_workflow("rotate")
    assert [a.id for a in workflow.activities] == [
        "action/rotate/task/read",
        "action/rotate/task/write",
        "action/rotate/on-success/tell",
    ]
    read, write, tell = workflow.activities
    assert read.depends_on == ()
    assert write.depends_on == (read.id,)
    assert tell.depends_on == (write.id,)
    assert {a.resource for a in workflow.activities} == {"rotate"}  # its outputs are kept under its name
    assert workflow.purpose == RunPurpose(day2_action="rotate")
    assert workflow.action == "deploy"
    assert isinstance(read.spec, ContainerSpec)
    # the deployed output is read at dispatch (late), with the action's variable among the inputs
    assert read.spec.command[-1] == "echo $(resource.db.output.host.value)$ $(variables.reason)$"
    assert read.inputs["reason"] == "routine"
    assert read.spec.env["TRELLIS_VAR_reason"] == "routine"
    scope = {**workflow.scope, "variables": read.inputs, "resource": {"db": {"output": {"host": {"value": "h1"}}}}}
    assert LATE.render(read.spec.command[-1], scope) == "echo h1 routine"


def test_a_run_variable_sets_an_action_variable() -> None:
    read = action_workflow("rotate", reason="leak").activities[0]
    assert isinstance(read.spec, ContainerSpec)
    assert read.inputs["reason"] == "leak"
    assert read.spec.env["TRELLIS_VAR_reason"] == "leak"


def test_an_action_of_type_deploy_deploys_only_its_resources_in_dependency_order() -> None:
    workflow = action_workflow("resize")
    ids = [a.id for a in workflow.activities]
    assert not [i for i in ids if i.startswith(("resource/vpc", "environment/"))], ids
    assert ids[:4] == ["resource/db/init", "resource/db/plan", "resource/db/apply", "resource/db/output"]
    assert ids[4:] == ["resource/app/task/start"]
    assert workflow.activities[0].depends_on == ()  # vpc is not deployed again: its outputs stay
    assert workflow.activities[4].depends_on == ("resource/db/output",)
    assert isinstance(workflow.activities[2].spec, IacSpec)
    assert workflow.activities[2].spec.stage == "apply"


def test_a_resource_templates_action_runs_as_that_resource_by_its_name_or_resource_dot_name() -> None:
    workflow = action_workflow("restart")
    assert [(a.id, a.resource, a.workspace) for a in workflow.activities] == [
        ("action/restart/task/bounce", "app", "app")
    ]
    assert action_workflow("app.restart").activities == workflow.activities
    # `rotate` is the EnvironmentTemplate's; the resource's is `app.rotate`
    assert action_workflow("app.rotate").activities[0].id == "action/rotate/task/again"


def test_an_unknown_action_is_an_error_naming_the_environment_and_every_defined_action() -> None:
    result = compile_run(purpose=RunPurpose(day2_action="rotat"))
    assert result.workflow is None
    (error,) = result.errors
    assert error.message == (
        "environment 'dev' has no action 'rotat' (its actions: rotate, resize, restart, app.restart, app.rotate)"
    )
    assert "rotate" in error.hint


def test_an_environment_without_actions_says_so() -> None:
    vpc_only = (
        VPC.split("---\n")[0]
        + STACK.split("  actions:")[0].replace(
            "    - name: db\n      dependsOn: [{name: vpc}]\n    - name: app\n      dependsOn: [{name: db}]\n", ""
        )
        + "---\n"
        + STACK.split("---\n")[2]
    )
    result = compile_run(vpc_only, purpose=RunPurpose(day2_action="rotate"))
    assert [e.message for e in result.errors] == [
        "environment 'dev' has no action 'rotate' (its templates declare no actions)"
    ]


def test_bad_action_definitions_are_errors_at_their_paths_in_every_compile() -> None:
    bad = BUNDLE.replace(
        "    - name: resize\n      type: deploy\n      reconcileResources: [{name: db}, {name: app}]\n",
        "    - name: resize\n      type: deploy\n      reconcileResources: [{name: dbb}, {name: app}, {name: app}]\n"
        "    - name: resize\n      type: workflows\n"
        "    - name: empty\n      type: deploy\n"
        "    - name: mixed\n      type: workflows\n      reconcileResources: [{name: db}]\n"
        "      workflows: {tasks: [{name: a, type: script, dependsOn: [b], options: {script: {script: x}}}]}\n",
    )
    result = compile_run(bad)  # an ordinary deploy: the actions are checked all the same
    assert result.workflow is None
    found = messages(result)
    assert (
        "spec.actions[1].reconcileResources[0].name: action 'resize': unknown resource 'dbb' in "
        "reconcileResources (the template's resources: vpc, db, app)" in found
    )
    assert "spec.actions[1].reconcileResources[2].name: resource 'app' is listed twice" in found
    assert "spec.actions[2].name: duplicate action name 'resize'" in found
    assert "spec.actions[2].workflows: action 'resize' of type workflows has no tasks" in found
    assert "spec.actions[3].reconcileResources: action 'empty' of type deploy names no reconcileResources" in found
    assert "spec.actions[4].reconcileResources: action 'mixed' of type workflows deploys no resources" in found
    dbb = next(e for e in result.errors if "'dbb'" in e.message)
    assert dbb.file == FILE
    assert dbb.line > 0
    assert 'did you mean "db"' in dbb.hint
    # a task's dependsOn is checked when the action is compiled for a run
    run = compile_run(
        bad.replace(
            "name: mixed\n      type: workflows\n      reconcileResources: [{name: db}]\n",
            "name: mixed\n      type: workflows\n",
        ),
        purpose=RunPurpose(day2_action="mixed"),
    )
    assert "spec.actions[4].workflows.tasks[0].dependsOn[0]: unknown task 'b' in dependsOn" in messages(run)


def test_a_resource_templates_action_may_not_name_reconcile_resources() -> None:
    bad = BUNDLE.replace(
        "    - name: rotate\n      type: workflows\n      workflows:\n        tasks: [{name: again",
        "    - name: rotate\n      type: deploy\n      reconcileResources: [{name: db}]\n      workflows:\n"
        "        tasks: [{name: again",
    )
    found = messages(compile_run(bad))
    assert "spec.actions[1].reconcileResources: action 'rotate' of a ResourceTemplate names reconcileResources" in found
    assert "spec.actions[1].workflows: action 'rotate' of type deploy runs no tasks" in found


def test_an_action_of_type_destroy_is_refused_for_a_run() -> None:
    text = BUNDLE.replace(
        "name: resize\n      type: deploy\n      reconcileResources: [{name: db}, {name: app}]",
        "name: resize\n      type: destroy",
    )
    assert compile_run(text).ok  # declared: fine
    result = compile_run(text, purpose=RunPurpose(day2_action="resize"))
    assert messages(result) == [
        "spec.actions[1].type: action 'resize' is of type destroy: a day-2 action does not destroy"
    ]


def test_a_required_action_variable_without_a_value_is_an_error() -> None:
    text = BUNDLE.replace(
        "variables: [{name: reason, value: routine}]", "variables: [{name: reason, options: {required: true}}]"
    )
    result = compile_run(text, purpose=RunPurpose(day2_action="rotate"))
    assert messages(result) == ["spec.actions[0].variables[0].value: action 'rotate' needs variable 'reason'"]
    assert compile_run(text, purpose=RunPurpose(day2_action="rotate"), inputs={"reason": "x"}).ok


def test_a_force_destroy_drops_every_hook_and_goes_on_past_failures() -> None:
    result = compile_run(action="destroy", purpose=RunPurpose(force=True))
    assert result.workflow is not None, messages(result)
    workflow = result.workflow
    ids = [a.id for a in workflow.activities]
    assert ids == [
        "resource/app/task/start",
        "resource/db/init", "resource/db/plan", "resource/db/destroy",
        "resource/vpc/init", "resource/vpc/plan", "resource/vpc/destroy",
    ]  # fmt: skip
    by_id = workflow.by_id()
    assert by_id["resource/vpc/destroy"].depends_on == ("resource/vpc/plan",)  # was after the `drain` hook
    assert by_id["resource/vpc/init"].depends_on == ("resource/db/destroy",)  # was after vpc's onInit hook
    assert by_id["resource/app/task/start"].depends_on == ()  # was after the environment's onInit
    assert workflow.continue_past_failure
    assert workflow.purpose.label == "force-destroy"
    ordinary = compile_run(action="destroy").workflow
    assert ordinary is not None
    assert not ordinary.continue_past_failure
    assert any("/on-init/" in a.id or "/before/" in a.id for a in ordinary.activities)


def test_rafay_actions_with_workflows_and_reconcile_resources_are_read_without_a_warning() -> None:
    rafay = BUNDLE.replace(
        "apiVersion: trellis.dev/v1\nkind: EnvironmentTemplate",
        "apiVersion: eaas.envmgmt.io/v1\nkind: EnvironmentTemplate",
    )
    result = compile_run(rafay, purpose=RunPurpose(day2_action="resize"))
    assert result.workflow is not None, messages(result)
    assert not [w for w in result.warnings if "not implemented" in w.message or "reconcile" in w.message]


def test_an_actions_hooks_wrap_its_tasks_as_an_environments_hooks_wrap_a_deploy() -> None:
    hooks = (
        "      hooks:\n"
        "        onInit: [{name: start, type: http, options: {http: {endpoint: 'https://h'}}}]\n"
        "        onSuccess: [{name: tell, type: http, options: {http: {endpoint: 'https://chat'}}}]\n"
        "        onFailure: [{name: page, type: http, options: {http: {endpoint: 'https://pager'}}}]\n"
        "        onCompletion: [{name: done, type: http, options: {http: {endpoint: 'https://h'}}}]\n"
    )
    text = BUNDLE.replace(
        '      hooks:\n        onSuccess: [{name: tell, type: http, options: {http: {endpoint: "https://chat"}}}]\n',
        hooks,
    )
    result = compile_run(text, purpose=RunPurpose(day2_action="rotate"))
    assert result.workflow is not None, messages(result)
    wiring = {a.id: (a.depends_on, a.when) for a in result.workflow.activities}
    assert wiring == {
        "action/rotate/on-init/start": ((), "success"),
        "action/rotate/task/read": (("action/rotate/on-init/start",), "success"),
        "action/rotate/task/write": (("action/rotate/task/read",), "success"),
        "action/rotate/on-success/tell": (("action/rotate/task/write",), "success"),
        "action/rotate/on-failure/page": (("action/rotate/task/read", "action/rotate/task/write"), "failure"),
        "action/rotate/on-completion/done": (("action/rotate/on-success/tell", "action/rotate/on-failure/page"),
                                             "always"),
    }  # fmt: skip


def test_a_resource_templates_deploy_action_deploys_its_own_resource_again() -> None:
    text = BUNDLE.replace(
        "    - name: rotate\n      type: workflows\n      workflows:\n        tasks: [{name: again",
        "    - name: redo\n      type: deploy\n    - name: rotate\n      type: workflows\n      workflows:\n"
        "        tasks: [{name: again",
    )
    result = compile_run(text, purpose=RunPurpose(day2_action="app.redo"))
    assert result.workflow is not None, messages(result)
    assert [a.id for a in result.workflow.activities] == ["resource/app/task/start"]
