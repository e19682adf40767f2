"""A drift check compiles plan-only: no apply, no hooks but onDrift, custom resources' driftCheck tasks."""

from __future__ import annotations

from typing import Any

from template_support import FILE, mutate, only
from test_template_late_binding import scope_for

from trellis_core.workflow import IacSpec, RunPurpose, Workflow
from trellis_engine.binding import skip_condition_holds
from trellis_templates.compiler import CompileResult, compile_bundle
from trellis_templates.errors import Problems
from trellis_templates.expressions import LATE
from trellis_templates.loader import load_text
from trellis_templates.validate import parse_documents

DRIFT = RunPurpose(drift=True)

STACK = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: network}
spec:
  provider: opentofu
  repositoryOptions: {url: "https://git.example/modules.git", directoryPath: network}
  hooks:
    onInit: [{name: hello, type: script, options: {script: {script: "echo hi"}}}]
    onSuccess: [{name: done, type: script, options: {script: {script: "echo done"}}}]
    provider:
      openTofu:
        deploy:
          plan: {before: [{name: lint, type: script, options: {script: {script: "echo lint"}}}]}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: database}
spec:
  provider: opentofu
  variables:
    - {name: subnet, value: "$(resource.network.output.subnet_id.value)$"}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: dsn, value: "$(resource.database.output.dsn.value)$"}
  providerOptions:
    custom:
      tasks: [{name: release, type: script, options: {script: {script: "echo release"}}}]
      driftCheck: {name: compare, type: script, options: {script: {script: "echo compare"}}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: dns}
spec:
  provider: custom
  variables:
    - {name: vpc, value: "$(resource.network.output.vpc_id.value)$"}
  providerOptions:
    custom:
      tasks: [{name: record, type: script, options: {script: {script: "echo record"}}}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  resources:
    - name: network
    - name: database
    - name: app
    - name: dns
  hooks:
    onInit: [{name: start, type: script, options: {script: {script: "echo start"}}}]
    onCompletion: [{name: end, type: script, options: {script: {script: "echo end"}}}]
    onDrift:
      - {name: page, type: http, options: {http: {endpoint: "https://hooks.example/drift"}}}
      - {name: note, type: script, options: {script: {script: "echo drifted"}}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: stack}
"""


def compile_drift(text: str = STACK) -> CompileResult:
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    assert not problems.errors, [str(p) for p in problems.errors]
    return compile_bundle(docs, "dev", {}, "deploy", purpose=DRIFT)


def workflow() -> Workflow:
    result = compile_drift()
    assert result.workflow is not None, [str(p) for p in result.errors]
    return result.workflow


def test_iac_resources_are_checked_out_initialised_and_planned_never_applied() -> None:
    wf = workflow()
    ids = [a.id for a in wf.activities]
    assert [i for i in ids if i.startswith("resource/network/")] == [
        "resource/network/checkout", "resource/network/init", "resource/network/plan",
    ]
    database = [i for i in ids if i.startswith("resource/database/")]
    assert database == ["resource/database/init", "resource/database/plan"]
    assert not any(a.stage in ("apply", "output", "destroy") for a in wf.activities)
    plan = wf.by_id()["resource/network/plan"]
    assert isinstance(plan.spec, IacSpec)
    assert plan.spec.drift
    init = wf.by_id()["resource/network/init"]
    assert isinstance(init.spec, IacSpec)
    assert not init.spec.drift
    assert wf.purpose == DRIFT


def test_every_hook_is_dropped_but_on_drift() -> None:
    stages = {a.stage for a in wf_activities()}
    assert stages == {"checkout", "init", "plan", "drift-check", "on-drift"}
    assert not any("/on-init/" in i or "/on-success/" in i or "/before/" in i for i in (a.id for a in wf_activities()))


def wf_activities() -> tuple[Any, ...]:
    return workflow().activities


def test_a_custom_resource_runs_its_drift_check_task_and_not_its_tasks() -> None:
    wf = workflow()
    check = wf.by_id()["resource/app/drift-check"]
    assert check.stage == "drift-check"
    assert check.resource == "app"
    assert "resource/app/task/release" not in wf.by_id()
    assert not any(a.resource == "dns" for a in wf.activities)  # no driftCheck: not checked


def test_on_drift_hooks_wait_for_every_check_and_run_only_when_one_found_drift() -> None:
    wf = workflow()
    page, note = wf.by_id()["environment/on-drift/page"], wf.by_id()["environment/on-drift/note"]
    assert page.when == "always"
    assert set(page.depends_on) == {"resource/network/plan", "resource/database/plan", "resource/app/drift-check"}
    assert note.depends_on == (page.id,)
    for hook in (page, note):
        assert hook.skip is not None
        in_sync = {"network": {"driftChanges": {"value": "no"}}, "app": {"driftChanges": {"value": "no"}}}
        assert skip_condition_holds(hook.skip.condition, scope_for(wf, hook, in_sync), LATE)
        drifted = {**in_sync, "database": {"driftChanges": {"value": "yes"}}}
        assert not skip_condition_holds(hook.skip.condition, scope_for(wf, hook, drifted), LATE)
        nothing = {"network": {"vpc_id": {"value": "v"}}}  # a failed check reports nothing
        assert skip_condition_holds(hook.skip.condition, scope_for(wf, hook, nothing), LATE)


def test_the_workflow_says_who_reads_which_outputs_in_a_deploy() -> None:
    readers = workflow().output_readers
    assert readers == {
        "app": {},
        "database": {"dsn": ("app",)},
        "dns": {},
        "network": {"subnet_id": ("database",), "vpc_id": ("dns",)},
    }


def test_resources_wait_for_the_checks_of_those_they_read() -> None:
    wf = workflow()
    assert wf.by_id()["resource/database/init"].depends_on == ("resource/network/plan",)
    assert wf.by_id()["resource/network/checkout"].depends_on == ()


def test_an_ordinary_deploy_compiles_as_before() -> None:
    problems = Problems()
    docs = parse_documents(load_text(STACK, FILE, problems), problems)
    result = compile_bundle(docs, "dev", {}, "deploy")
    assert result.workflow is not None
    ids = result.workflow.by_id()
    assert "resource/network/apply" in ids
    assert "resource/app/task/release" in ids
    assert "resource/app/drift-check" not in ids
    assert "environment/on-drift/page" not in ids
    assert result.workflow.output_readers == {}


def test_a_drift_check_task_that_depends_on_tasks_is_an_error_naming_its_path() -> None:
    text = mutate(("driftCheck: {name: compare,", "driftCheck: {name: compare, dependsOn: [release],"), text=STACK)
    result = compile_drift(text)
    assert result.workflow is None
    problem = only(result.errors, "spec.providerOptions.custom.driftCheck.dependsOn")
    assert "runs alone" in problem.message


def test_a_drift_check_task_on_an_opentofu_resource_is_an_error() -> None:
    text = mutate(
        ("  variables:\n    - {name: subnet,", "  providerOptions:\n    custom:\n      driftCheck: "
         "{name: c, type: script, options: {script: {script: x}}}\n  variables:\n    - {name: subnet,"),
        text=STACK,
    )
    result = compile_drift(text)
    problem = only(result.errors, "spec.providerOptions.custom.driftCheck")
    assert "driftCheck is for custom resources" in problem.message


def test_an_on_drift_hook_with_a_skip_condition_is_an_error() -> None:
    text = mutate(
        ('{name: note, type: script,', '{name: note, skipConfig: {condition: "true"}, type: script,'), text=STACK
    )
    result = compile_drift(text)
    problem = only(result.errors, "spec.hooks.onDrift[1].skipConfig.condition")
    assert "takes no skip condition" in problem.message


def test_problems_of_a_drift_check_are_reported_once() -> None:
    text = mutate(('script: "echo compare"', 'script: "echo $(nope.x)$"'), text=STACK)
    text = mutate(('script: "echo release"', 'script: "echo $(nope2.x)$"'), text=text)
    result = compile_drift(text)
    messages = [str(p) for p in result.errors]
    assert len(messages) == len(set(messages)) == 2, messages


def test_on_drift_hooks_of_one_name_are_an_error() -> None:
    text = mutate(("{name: note, type: script,", "{name: page, type: script,"), text=STACK)
    result = compile_drift(text)
    problem = only(result.errors, "spec.hooks.onDrift[1].name")
    assert "duplicate hook name 'page'" in problem.message


def test_a_misplaced_drift_check_is_reported_by_an_ordinary_deploy_too() -> None:
    text = mutate(("driftCheck: {name: compare,", "driftCheck: {name: compare, dependsOn: [release],"), text=STACK)
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    result = compile_bundle(docs, "dev", {}, "deploy")
    assert result.workflow is None
    assert "runs alone" in only(result.errors, "spec.providerOptions.custom.driftCheck.dependsOn").message


def test_a_bad_on_drift_hook_is_reported_by_an_ordinary_deploy_too() -> None:
    text = mutate(('endpoint: "https://hooks.example/drift"', 'endpoint: "$(nope.x)$"'), text=STACK)
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    result = compile_bundle(docs, "dev", {}, "deploy")
    assert result.workflow is None
    assert "unknown name 'nope'" in only(result.errors, "spec.hooks.onDrift[0].options.http.endpoint").message
