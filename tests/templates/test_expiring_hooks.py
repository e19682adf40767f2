"""`onExpiring` hooks in the compiler: an expiry notice's run (RunPurpose.expiring) is only the
template's onExpiring hooks, in order, reading the trigger's expiry time and the deployed outputs
late; they are checked in every compile and run by nothing else."""

from __future__ import annotations

from template_support import FILE, only

from trellis_core.workflow import HttpSpec, RunPurpose
from trellis_templates.compiler import CompileResult, compile_bundle
from trellis_templates.errors import Problems
from trellis_templates.expressions import LATE
from trellis_templates.loader import load_text
from trellis_templates.validate import parse_documents

HOOKS = """\
    onExpiring:
      - name: warn
        type: http
        options:
          http:
            endpoint: "https://chat.example.com/hook"
            method: POST
            body: "$(environment.name)$ ($(resource.db.output.host.value)$) expires at $(trigger.payload.expires_at)$"
      - {name: log, type: script, options: {script: {script: "echo expiring"}}}
"""

BUNDLE = f"""\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {{name: db}}
spec:
  provider: opentofu
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {{name: stack}}
spec:
  resources:
    - name: db
  hooks:
    onInit: [{{name: hi, type: script, options: {{script: {{script: "echo hi"}}}}}}]
{HOOKS}  schedules:
    - {{name: ttl, type: destroy, cadence: {{timeToLive: 8h}}}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {{name: dev}}
spec:
  template: {{name: stack}}
"""
EXPIRES = "2026-12-02T10:00:00+00:00"


def compile_run(text: str = BUNDLE, purpose: RunPurpose = RunPurpose(expiring=True)) -> CompileResult:
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    if problems.errors:
        return CompileResult(None, (), tuple(problems.errors))
    trigger = {"type": "schedule", "schedule": "ttl", "payload": {"schedule": "ttl", "expires_at": EXPIRES}}
    return compile_bundle(docs, "dev", {}, "deploy", purpose=purpose, trigger=trigger)


def test_an_expiry_notice_compiles_to_only_the_on_expiring_hooks_in_order() -> None:
    result = compile_run()
    workflow = result.workflow
    assert workflow is not None, [str(e) for e in result.errors]
    assert [(a.id, a.stage) for a in workflow.activities] == [
        ("environment/on-expiring/warn", "on-expiring"),
        ("environment/on-expiring/log", "on-expiring"),
    ]  # no resource, no onInit
    warn, log = workflow.activities
    assert (warn.depends_on, log.depends_on) == ((), (warn.id,))
    assert workflow.purpose.label == "expiring"
    assert not workflow.purpose.ordinary
    assert isinstance(warn.spec, HttpSpec)
    scope = {**workflow.scope, "resource": {"db": {"output": {"host": {"value": "h1"}}}}}
    assert LATE.render(warn.spec.body, scope) == f"dev (h1) expires at {EXPIRES}"


def test_an_ordinary_deploy_runs_no_on_expiring_hook() -> None:
    result = compile_run(purpose=RunPurpose())
    assert result.workflow is not None, [str(e) for e in result.errors]
    assert not [a.id for a in result.workflow.activities if "on-expiring" in a.id]


def test_a_bad_on_expiring_hook_is_an_error_at_its_path_in_an_ordinary_compile_too() -> None:
    text = BUNDLE.replace("- {name: log, type: script,", "- {name: warn, type: script,")
    for purpose in (RunPurpose(), RunPurpose(expiring=True)):
        problem = only(compile_run(text, purpose).errors, "spec.hooks.onExpiring[1].name")
        assert problem.message == "duplicate hook name 'warn' in this list"


def test_an_expiry_notice_of_a_template_without_on_expiring_hooks_is_an_error() -> None:
    result = compile_run(BUNDLE.replace(HOOKS, ""))
    assert result.workflow is None
    problem = only(result.errors, "spec.hooks")
    assert problem.message == "template 'stack' has no onExpiring hooks: an expiry notice runs nothing"


def test_an_expiry_notice_goes_with_a_deploy_only_and_alone() -> None:
    assert RunPurpose(expiring=True).problem("destroy") == "an expiry notice runs with action deploy, not destroy"
    assert RunPurpose(expiring=True, force=True).problem("destroy") == (
        "a run is one of force and an expiry notice, not several"
    )
    assert RunPurpose(expiring=True).reads_deploy
