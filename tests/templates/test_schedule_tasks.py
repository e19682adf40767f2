"""`workflows` schedules in the compiler: a slot's run compiles to the schedule's tasks (as a day-2
action of type workflows, reading the deployed outputs late), and every bad workflows schedule is
an error at its path."""

from __future__ import annotations

from template_support import FILE, only

from trellis_core.workflow import ContainerSpec, RunPurpose
from trellis_templates.compiler import CompileResult, compile_bundle
from trellis_templates.documents import Environment, EnvironmentTemplate
from trellis_templates.errors import Problems
from trellis_templates.expressions import LATE
from trellis_templates.loader import load_text
from trellis_templates.schedules import effective_schedules
from trellis_templates.validate import parse_documents

BUNDLE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: db}
spec:
  provider: opentofu
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  resources:
    - name: db
  hooks:
    onInit: [{name: hi, type: http, options: {http: {endpoint: "https://h"}}}]
  schedules:
    - name: nightly-report
      type: workflows
      cadence: {cronExpression: "0 2 * * *"}
      workflows:
        tasks:
          - name: read
            type: script
            options: {script: {script: "echo $(resource.db.output.host.value)$ at $(trigger.payload.due)$"}}
          - name: send
            type: script
            dependsOn: [read]
            options: {script: {script: "echo sent"}}
    - {name: down, type: destroy, cadence: {cronExpression: "0 20 * * *"}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: stack}
"""


def compile_run(text: str = BUNDLE, schedule: str = "nightly-report") -> CompileResult:
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    if problems.errors:
        return CompileResult(None, (), tuple(problems.errors))
    payload = {"schedule": schedule, "due": "2026-12-02T02:00:00+00:00"}
    trigger = {"type": "schedule", "schedule": schedule, "payload": payload}
    return compile_bundle(docs, "dev", {}, "deploy", purpose=RunPurpose(scheduled_tasks=schedule), trigger=trigger)


def messages(result: CompileResult) -> list[str]:
    return [f"{e.path}: {e.message}" for e in result.errors]


def test_a_workflows_schedule_compiles_to_only_its_tasks_in_dependency_order() -> None:
    result = compile_run()
    workflow = result.workflow
    assert workflow is not None, messages(result)
    assert [a.id for a in workflow.activities] == [
        "action/nightly-report/task/read",
        "action/nightly-report/task/send",
    ]  # no resource deploy, no environment hook: the deployed environment is left as it is
    read, send = workflow.activities
    assert read.depends_on == ()
    assert send.depends_on == (read.id,)
    assert workflow.action == "deploy"
    assert workflow.purpose == RunPurpose(scheduled_tasks="nightly-report")
    assert workflow.purpose.label == "schedule:nightly-report"
    assert not workflow.purpose.ordinary
    assert isinstance(read.spec, ContainerSpec)
    # the deployed output is read at dispatch (late); the trigger's payload names the slot
    scope = {**workflow.scope, "resource": {"db": {"output": {"host": {"value": "h1"}}}}}
    assert LATE.render(read.spec.command[-1], scope) == "echo h1 at 2026-12-02T02:00:00+00:00"


def test_an_environments_workflows_schedule_replaces_the_templates_of_that_name() -> None:
    text = BUNDLE + (
        "  schedules:\n"
        "    - name: nightly-report\n      type: workflows\n      cadence: {cronExpression: '0 3 * * *'}\n"
        "      workflows: {tasks: [{name: mine, type: script, options: {script: {script: 'echo mine'}}}]}\n"
    )
    result = compile_run(text)
    assert result.workflow is not None, messages(result)
    assert [a.id for a in result.workflow.activities] == ["action/nightly-report/task/mine"]


def test_an_unknown_schedule_is_an_error_naming_the_environments_schedules() -> None:
    result = compile_run(schedule="nightly-reprt")
    assert result.workflow is None
    (error,) = result.errors
    assert error.message == "environment 'dev' has no schedule 'nightly-reprt' (its schedules: nightly-report, down)"
    assert "nightly-report" in error.hint


def test_a_schedule_of_another_type_runs_no_tasks() -> None:
    result = compile_run(schedule="down")
    assert result.workflow is None
    problem = only(result.errors, "spec.schedules[1].type")
    assert problem.message == "schedule 'down' of environment 'dev' is of type destroy: it runs no tasks"


def test_a_bad_task_is_an_error_at_its_path_in_the_schedule() -> None:
    result = compile_run(BUNDLE.replace("dependsOn: [read]", "dependsOn: [red]"))
    assert result.workflow is None
    problem = only(result.errors, "spec.schedules[0].workflows.tasks[1].dependsOn[0]")
    assert problem.message == "unknown task 'red' in dependsOn"
    assert "read" in problem.hint


def test_a_workflows_schedule_without_tasks_is_an_error_at_its_workflows() -> None:
    start, end = BUNDLE.index("      workflows:\n"), BUNDLE.index("    - {name: down")
    text = BUNDLE[:start] + "      workflows: {tasks: []}\n" + BUNDLE[end:]
    result = compile_run(text)
    problem = only(result.errors, "spec.schedules[0].workflows")
    assert problem.message == "schedule 'nightly-report' of type workflows has no tasks"


def test_tasks_on_a_schedule_of_another_type_are_an_error() -> None:
    text = BUNDLE.replace(
        '{name: down, type: destroy, cadence: {cronExpression: "0 20 * * *"}}',
        '{name: down, type: destroy, cadence: {cronExpression: "0 20 * * *"}, workflows: {tasks: []}}',
    )
    problem = only(compile_run(text).errors, "spec.schedules[1].workflows")
    assert problem.message == "schedule 'down' of type destroy runs no tasks"


def test_a_workflows_schedule_runs_on_a_cron_not_a_time_to_live() -> None:
    text = BUNDLE.replace('cadence: {cronExpression: "0 2 * * *"}', "cadence: {timeToLive: 8h}")
    problem = only(compile_run(text).errors, "spec.schedules[0].cadence.timeToLive")
    assert problem.message == (
        "schedule 'nightly-report' is a workflows schedule: it runs on a cronExpression, not a timeToLive"
    )


def test_a_workflows_schedule_is_among_the_effective_schedules() -> None:
    problems = Problems()
    docs = parse_documents(load_text(BUNDLE, FILE, problems), problems)
    template = next(d.document for d in docs if isinstance(d.document, EnvironmentTemplate))
    environment = next(d.document for d in docs if isinstance(d.document, Environment))
    schedules = effective_schedules(template, environment, problems)
    assert not problems.errors, problems.errors
    assert [(s.name, s.type, s.cron) for s in schedules] == [
        ("nightly-report", "workflows", "0 2 * * *"),
        ("down", "destroy", "0 20 * * *"),
    ]


def test_scheduled_tasks_go_with_a_deploy_only_and_alone() -> None:
    assert RunPurpose(scheduled_tasks="x").problem("destroy") == "scheduled tasks runs with action deploy, not destroy"
    assert RunPurpose(scheduled_tasks="x", drift=True).problem("deploy") == (
        "a run is one of drift and scheduled tasks, not several"
    )
    assert RunPurpose(scheduled_tasks="x").on_deployed == "x"
