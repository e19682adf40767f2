"""Compilation rules: ids, edges, when, hooks, drivers, variables, late binding, scope."""

from __future__ import annotations

from template_support import run

from trellis_core.workflow import ApprovalSpec, ContainerSpec, FunctionSpec, HttpSpec, IacSpec, Workflow

HEAD = "apiVersion: trellis.dev/v1\n"


def doc(kind: str, body: str) -> str:
    return f"---\n{HEAD}kind: {kind}\n{body.strip()}\n"


TOFU = doc(
    "ResourceTemplate",
    """
metadata: {name: vpc}
spec:
  provider: opentofu
  providerOptions:
    openTofu: {backendConfigs: ["key=$(environment.name)$"], timeoutSeconds: 600}
  repositoryOptions: {url: "https://git.example.com/m.git", branch: main, directoryPath: vpc}
  variables:
    - {name: cidr, value: 10.0.0.0/16}
    - {name: tags, valueType: json, value: {team: a}}
    - {name: secret, value: s3cr3t, options: {sensitive: true}}
  hooks:
    onInit: [{name: start, type: script, options: {script: {script: "echo start"}}}]
    onSuccess: [{name: ok, type: script, options: {script: {script: "echo ok"}}}]
    onFailure:
      - {name: first, type: script, options: {script: {script: "echo 1"}}}
      - {name: second, type: script, options: {script: {script: "echo 2"}}}
    onCompletion: [{name: done, type: script, options: {script: {script: "echo done"}}}]
    provider:
      openTofu:
        deploy:
          plan: {after: [{name: check, type: script, options: {script: {script: "echo check"}}}]}
        destroy:
          destroy: {before: [{name: drain, type: script, options: {script: {script: "echo drain"}}}]}
""",
)

APP = doc(
    "ResourceTemplate",
    """
metadata: {name: app}
spec:
  provider: custom
  agents: [{name: app-pool}]
  variables:
    - {name: vpc_id, value: "$(resource.vpc.output.id.value)$"}
  providerOptions:
    custom:
      reverseOnDestroy: true
      tasks:
        - {name: build, type: script, options: {script: {script: "echo $(variables.vpc_id)$"}}}
        - name: push
          type: driver
          dependsOn: [build]
          retries: 2
          timeoutSeconds: 30
          onFailure: continue
          executeOnce: true
          agents: [{name: pushers}]
          skipConfig: {condition: "$(environment.variables.skip)$", skipOnDestroy: true}
          driver: {name: pusher}
          options: {container: {arguments: ["push", "$(environment.name)$"]}}
        - name: wait
          type: driver
          dependsOn: [push]
          driver: {name: rollout}
        - name: ask
          type: approval
          dependsOn: [wait]
          options: {approval: {type: webhook, internal: {emails: [lead@example.com]}, webhook: {endpoint: "https://chat"}}}
""",
)

DRIVERS = doc(
    "Driver",
    """
metadata: {name: pusher}
spec:
  config:
    type: container
    timeoutSeconds: 90
    maxRetryCount: 5
    container: {image: "registry/pusher:1", commands: [pusher], arguments: [--help], envVars: {A: "1"}}
""",
) + doc(
    "Driver",
    """
metadata: {name: rollout}
spec:
  config:
    type: function
    timeoutSeconds: 20
    pollingConfig: {repeat: 10s, until: 1h30m}
    function: {image: "registry/rollout:2", cpuLimitMilli: "50"}
""",
)

ENV = doc(
    "EnvironmentTemplate",
    """
metadata: {name: stack}
spec:
  agents: [{name: shared}]
  resources:
    - name: vpc
    - name: app
  variables:
    - {name: skip, value: "false"}
  hooks:
    onInit: [{name: hello, type: http, options: {http: {endpoint: "https://h/$(run.id)$"}}}]
    onSuccess: [{name: yay, type: http, options: {http: {endpoint: "https://h"}}}]
    onFailure: [{name: boo, type: http, options: {http: {endpoint: "https://h"}}}]
    onCompletion: [{name: bye, type: http, options: {http: {endpoint: "https://h"}}}]
""",
) + doc(
    "Environment",
    """
metadata: {name: dev}
spec:
  template: {name: stack}
""",
)

BUNDLE = TOFU + APP + DRIVERS + ENV


def compiled(action: str = "deploy", text: str = BUNDLE, **inputs: str) -> Workflow:
    result = run(text, action=action, inputs=inputs)  # type: ignore[arg-type]
    assert result.workflow is not None, [str(e) for e in result.errors]
    return result.workflow


def test_an_opentofu_resource_compiles_to_the_documented_ids_in_order() -> None:
    ids = [a.id for a in compiled().activities if a.resource == "vpc"]
    assert ids == [
        "resource/vpc/on-init/start",
        "resource/vpc/checkout",
        "resource/vpc/init",
        "resource/vpc/plan",
        "resource/vpc/plan/after/check",
        "resource/vpc/apply",
        "resource/vpc/output",
        "resource/vpc/on-success/ok",
        "resource/vpc/on-failure/first",
        "resource/vpc/on-failure/second",
        "resource/vpc/on-completion/done",
    ]


def test_stages_chain_and_share_the_resources_workspace() -> None:
    acts = compiled().by_id()
    assert acts["resource/vpc/apply"].depends_on == ("resource/vpc/plan/after/check",)
    assert acts["resource/vpc/checkout"].depends_on == ("resource/vpc/on-init/start",)
    assert {a.workspace for a in acts.values() if a.resource == "vpc"} == {"vpc"}
    plan = acts["resource/vpc/plan"]
    assert isinstance(plan.spec, IacSpec)
    assert (plan.spec.tool, plan.spec.stage, plan.spec.backend_configs) == ("opentofu", "plan", ("key=dev",))
    assert plan.timeout_seconds == 600


def test_failure_hooks_wait_for_the_whole_resource_and_then_run_in_order() -> None:
    acts = compiled().by_id()
    first, second = acts["resource/vpc/on-failure/first"], acts["resource/vpc/on-failure/second"]
    assert first.when == "failure"
    assert set(first.depends_on) == {
        a.id
        for a in acts.values()
        if a.resource == "vpc" and a.stage not in ("on-success", "on-failure", "on-completion")
    }
    assert (second.when, second.depends_on) == ("success", ("resource/vpc/on-failure/first",))
    done = acts["resource/vpc/on-completion/done"]
    assert done.when == "always"
    assert done.depends_on == ("resource/vpc/on-success/ok", "resource/vpc/on-failure/second")


def test_an_output_reference_adds_the_edge_and_stays_for_the_scheduler() -> None:
    acts = compiled().by_id()
    build = acts["resource/app/task/build"]
    assert build.depends_on == ("resource/vpc/on-success/ok", "resource/vpc/on-completion/done")
    assert build.inputs["vpc_id"] == "$(resource.vpc.output.id.value)$"
    assert isinstance(build.spec, ContainerSpec)
    assert build.spec.command == ("sh", "-c", "echo $(variables.vpc_id)$")
    assert build.spec.env["TRELLIS_VAR_vpc_id"] == "$(resource.vpc.output.id.value)$"


def test_variables_reach_opentofu_as_tf_vars_with_sensitive_names_listed() -> None:
    init = compiled().by_id()["resource/vpc/init"]
    assert isinstance(init.spec, IacSpec)
    assert init.spec.env["TF_VAR_tags"] == '{"team":"a"}'
    assert init.spec.env["TF_VAR_cidr"] == "10.0.0.0/16"
    assert init.inputs == {"cidr": "10.0.0.0/16", "tags": {"team": "a"}, "secret": "s3cr3t"}
    assert {"secret", "TF_VAR_secret", "TRELLIS_VAR_secret"} <= set(init.sensitive)


def test_hook_settings_map_onto_the_activity() -> None:
    push = compiled().by_id()["resource/app/task/push"]
    assert (push.on_failure, push.retry.max_attempts, push.timeout_seconds) == ("continue", 3, 30)
    assert push.execute_once
    assert push.agents == ("pushers",)
    assert push.skip is not None
    assert (push.skip.condition, push.skip.skip_on_destroy) == ("", True)
    assert compiled(skip="yes").by_id()["resource/app/task/push"].skip.condition == "true"  # type: ignore[union-attr]


def test_a_driver_hooks_container_fields_replace_the_drivers() -> None:
    push = compiled().by_id()["resource/app/task/push"]
    assert isinstance(push.spec, ContainerSpec)
    assert (push.spec.image, push.spec.command, push.spec.args) == (
        "registry/pusher:1",
        ("pusher",),
        ("push", "dev"),
    )
    assert push.spec.env["A"] == "1"


def test_a_function_driver_compiles_to_a_function_activity() -> None:
    wait = compiled().by_id()["resource/app/task/wait"]
    assert wait.kind == "function"
    assert wait.spec == FunctionSpec(
        image="registry/rollout:2",
        repeat_seconds=10,
        until_seconds=5400,
        invocation_timeout_seconds=20,
        env=wait.spec.env,
        cpu_limit_milli=50,
    )  # type: ignore[union-attr]


def test_an_approval_notifies_with_a_late_callback_and_names_its_approvers() -> None:
    ask = compiled().by_id()["resource/app/task/ask"]
    assert ask.kind == "approval"
    assert isinstance(ask.spec, ApprovalSpec)
    assert ask.spec.approvers == ("lead@example.com",)
    assert ask.spec.notify is not None
    assert "$(approval.callback_url)$" in ask.spec.notify.body


def test_agents_come_from_the_hook_the_template_or_the_environment() -> None:
    acts = compiled().by_id()
    assert acts["resource/app/task/build"].agents == ("app-pool",)
    assert acts["resource/vpc/init"].agents == ("shared",)
    assert acts["environment/on-init/hello"].agents == ("shared",)


def test_environment_hooks_wrap_the_whole_graph() -> None:
    wf = compiled()
    ids = [a.id for a in wf.activities]
    assert ids[0] == "environment/on-init/hello"
    assert ids[-3:] == [
        "environment/on-success/yay",
        "environment/on-failure/boo",
        "environment/on-completion/bye",
    ]
    acts = wf.by_id()
    assert set(acts["environment/on-completion/bye"].depends_on) == set(ids[:-1])
    assert "resource/vpc/on-failure/first" not in acts["environment/on-failure/boo"].depends_on
    assert isinstance(acts["environment/on-init/hello"].spec, HttpSpec)
    assert acts["environment/on-init/hello"].workspace == ""


def test_destroy_reverses_resources_stages_and_tasks() -> None:
    wf = compiled("destroy")
    ids = [a.id for a in wf.activities]
    assert ids.index("resource/app/task/build") < ids.index("resource/vpc/init")
    assert ids.index("resource/app/task/ask") < ids.index("resource/app/task/build")
    acts = wf.by_id()
    assert acts["resource/app/task/push"].depends_on == ("resource/app/task/wait",)
    vpc = [i for i in ids if i.startswith("resource/vpc/") and "/on-" not in i]
    assert vpc == [
        "resource/vpc/checkout",
        "resource/vpc/init",
        "resource/vpc/plan",
        "resource/vpc/destroy/before/drain",
        "resource/vpc/destroy",
    ]
    plan = acts["resource/vpc/plan"]
    assert isinstance(plan.spec, IacSpec)
    assert plan.spec.destroy


def test_the_scope_holds_what_the_scheduler_needs_for_late_strings() -> None:
    result = run(BUNDLE, inputs={"skip": "no"})
    assert result.workflow is not None
    scope = result.workflow.scope
    assert scope["environment"] == {"name": "dev", "id": "dev", "variables": {"skip": "no"}}
    assert scope["run"] == {"id": "", "action": "deploy", "requested_by": ""}
    assert set(scope) == {"environment", "run", "tenant", "context"}


def test_a_source_only_function_is_an_error_that_says_so() -> None:
    text = BUNDLE.replace(
        'function: {image: "registry/rollout:2", cpuLimitMilli: "50"}',
        "function: {source: 'def handle(): pass', language: python}",
    )
    result = run(text)
    assert any("built from source is not supported" in e.message for e in result.errors)


def test_an_unknown_run_variable_is_a_warning_with_a_hint() -> None:
    result = run(BUNDLE, inputs={"skp": "x"})
    assert result.workflow is not None
    assert [(w.message, w.hint) for w in result.warnings] == [
        ("run variable 'skp' is not declared by any template", 'did you mean "skip"?')
    ]


def test_an_environment_variable_reading_outputs_stays_late_in_environment_hooks() -> None:
    text = BUNDLE.replace(
        '    - {name: skip, value: "false"}',
        '    - {name: skip, value: "false"}\n    - {name: vpc_id, value: "$(resource.vpc.output.id.value)$"}',
    ).replace(
        'onSuccess: [{name: yay, type: http, options: {http: {endpoint: "https://h"}}}]',
        'onSuccess: [{name: yay, type: http, options: {http: {endpoint: "https://h/$(variables.vpc_id)$"}}}]',
    )
    yay = compiled(text=text).by_id()["environment/on-success/yay"]
    assert isinstance(yay.spec, HttpSpec)
    assert yay.spec.url == "https://h/$(variables.vpc_id)$"
    assert yay.inputs["vpc_id"] == "$(resource.vpc.output.id.value)$"
