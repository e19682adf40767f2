"""Rafay documents as their users write them: selectors, workflowHandler, inline contexts, TTLs."""

from __future__ import annotations

from template_support import run

from trellis_core.workflow import ContainerSpec, HttpSpec

RAFAY = """\
apiVersion: eaas.envmgmt.io/v1
kind: ResourceTemplate
metadata: {name: vpc-rt, project: dev-project}
spec:
  provider: opentofu
  providerOptions:
    openTofu: {backendType: system, refresh: true}
  repositoryOptions: {name: envmgr, branch: dev, directoryPath: terraform/vpc}
  variables:
    - name: aws_region
      valueType: text
      value: us-west-2
      options: {required: true, override: {type: allowed}}
  version: v1
---
apiVersion: eaas.envmgmt.io/v1
kind: ResourceTemplate
metadata: {name: eks-rt, project: dev-project}
spec:
  provider: opentofu
  repositoryOptions: {name: envmgr, branch: dev, directoryPath: terraform/eks}
  contexts:
    - data:
        envs: [{key: KUBE_TIMEOUT, value: "300"}]
  variables:
    - {name: eks_cluster_name, valueType: text, value: EKSClusterName, options: {override: {type: allowed}}}
    - name: eks_private_subnets
      valueType: expression
      value: $(resource."vpc-rt".output.private_subnets.value)$
      options: {override: {type: notallowed}}
  hooks:
    onSuccess:
      - name: register
        type: workflowHandler
        workflowHandler: {name: registrar}
  version: v1
---
apiVersion: eaas.envmgmt.io/v1
kind: Driver
metadata: {name: registrar, project: dev-project}
spec:
  config:
    type: http
    successCondition: "$(response.status == 201)$"
    http: {endpoint: "https://registry.example.com/clusters", method: POST}
---
apiVersion: eaas.envmgmt.io/v1
kind: Repository
metadata: {name: envmgr, project: dev-project}
spec: {endpoint: "https://git.example.com/envmgr.git"}
---
apiVersion: eaas.envmgmt.io/v1
kind: EnvironmentTemplate
metadata: {name: app-env, project: dev-project}
spec:
  agents: [{name: dev-agent}]
  resources:
    - {kind: resourcetemplate, name: vpc-rt, type: dynamic, resourceOptions: {version: v1, dedicated: true}}
    - kind: resourcetemplate
      name: eks-rt
      type: dynamic
      resourceOptions: {version: v1}
      dependsOn: [{name: vpc-rt}]
  variables:
    - name: cluster_name
      valueType: text
      options: {required: true, override: {type: allowed, selector: resources.eks-rt.eks_cluster_name}}
    - name: aws_region
      valueType: text
      value: us-west-2
      options: {required: true, override: {type: allowed, selectors: [resources.vpc-rt.aws_region]}}
  schedules:
    - name: nightly-teardown
      type: destroy
      cadence: {timeToLive: 8h}
      optOutOptions: {allowOptOut: {value: true}}
  version: v1
  versionState: active
---
apiVersion: eaas.envmgmt.io/v1
kind: Environment
metadata: {name: dev-eks, project: dev-project}
spec:
  template: {name: app-env, version: v1}
  variables:
    - {name: cluster_name, value: team-a-eks}
    - {name: aws_region, value: eu-west-1}
"""


def test_a_selector_sets_the_named_variable_of_the_named_resource() -> None:
    result = run(RAFAY, environment="dev-eks")
    assert result.errors == ()
    assert result.workflow is not None
    acts = result.workflow.by_id()
    assert acts["resource/eks-rt/init"].inputs["eks_cluster_name"] == "team-a-eks"
    assert "cluster_name" not in acts["resource/eks-rt/init"].inputs
    assert acts["resource/vpc-rt/init"].inputs["aws_region"] == "eu-west-1"


def test_rafay_fields_trellis_does_not_implement_are_named_in_warnings() -> None:
    result = run(RAFAY, environment="dev-eks")
    assert {w.path for w in result.warnings} == {"spec.resources[0].resourceOptions.dedicated"}


def test_a_workflow_handler_hook_runs_its_driver() -> None:
    result = run(RAFAY, environment="dev-eks")
    assert result.workflow is not None
    register = result.workflow.by_id()["resource/eks-rt/on-success/register"]
    assert register.spec == HttpSpec(
        url="https://registry.example.com/clusters", success_condition="$(response.status == 201)$"
    )


def test_an_inline_context_gives_its_envs() -> None:
    result = run(RAFAY, environment="dev-eks")
    assert result.workflow is not None
    spec = result.workflow.by_id()["resource/eks-rt/on-success/register"]
    init = result.workflow.by_id()["resource/eks-rt/init"]
    assert spec.kind == "http"
    assert init.spec.env["KUBE_TIMEOUT"] == "300"  # type: ignore[union-attr]


def test_a_selector_to_an_unknown_resource_or_variable_is_an_error_with_a_hint() -> None:
    text = RAFAY.replace("selector: resources.eks-rt.eks_cluster_name", "selector: resources.eks-rt.cluster_nme")
    problem = next(e for e in run(text, environment="dev-eks").errors if "selector" in e.path)
    assert problem.path == "spec.variables[0].options.override.selector"
    assert (problem.message, problem.hint) == (
        "resource 'eks-rt' has no variable 'cluster_nme'",
        'did you mean "eks_cluster_name"?',
    )
    text = RAFAY.replace("selectors: [resources.vpc-rt.aws_region]", "selectors: [resources.vpc.aws_region]")
    problem = next(e for e in run(text, environment="dev-eks").errors if "selector" in e.path)
    assert problem.path == "spec.variables[1].options.override.selectors[0]"
    assert problem.hint == 'did you mean "vpc-rt"?'


def test_a_selected_variable_obeys_the_resources_override_rule() -> None:
    text = RAFAY.replace(
        "selector: resources.eks-rt.eks_cluster_name", "selector: resources.eks-rt.eks_private_subnets"
    )
    errors = run(text, environment="dev-eks").errors
    assert any(
        "may not be overridden" in e.message and e.path == "spec.variables[0].options.override.selector" for e in errors
    ), [str(e) for e in errors]


def test_a_schedule_needs_a_cron_expression_or_a_time_to_live() -> None:
    text = RAFAY.replace("cadence: {timeToLive: 8h}", "cadence: {}")
    assert any(e.path == "spec.schedules[0].cadence" for e in run(text, environment="dev-eks").errors)


def test_a_container_hook_in_a_rafay_document_still_compiles() -> None:
    text = RAFAY.replace(
        "type: workflowHandler\n        workflowHandler: {name: registrar}",
        'type: container\n        options: {container: {image: alpine, commands: ["true"]}}',
    )
    result = run(text, environment="dev-eks")
    assert result.workflow is not None, [str(e) for e in result.errors]
    assert isinstance(result.workflow.by_id()["resource/eks-rt/on-success/register"].spec, ContainerSpec)


def test_a_drivers_input_contexts_reach_its_activity() -> None:
    text = RAFAY.replace(
        """    type: http
    successCondition: "$(response.status == 201)$"
    http: {endpoint: "https://registry.example.com/clusters", method: POST}""",
        """    type: function
    function: {image: "registry.example.com/jira-approval:1"}
  inputs:
    - data:
        variables:
          - {name: jira_ticket_text, value: "Approve $(environment.name)$"}
          - {name: jira_api_token, value: t0ken, options: {sensitive: true}}
        envs: [{key: JIRA_FQDN, value: jira.example.com}]""",
    )
    result = run(text, environment="dev-eks")
    assert result.workflow is not None, [str(e) for e in result.errors]
    register = result.workflow.by_id()["resource/eks-rt/on-success/register"]
    assert register.kind == "function"
    assert register.inputs["jira_ticket_text"] == "Approve dev-eks"
    assert register.inputs["eks_cluster_name"] == "team-a-eks"  # the resource's own variables win
    assert "jira_api_token" in register.sensitive
    assert register.spec.env["JIRA_FQDN"] == "jira.example.com"  # type: ignore[union-attr]


def test_a_detect_drift_schedule_reads_in_a_rafay_document_too() -> None:
    text = RAFAY.replace(
        "type: destroy\n      cadence: {timeToLive: 8h}",
        "type: detectDrift\n      cadence: {cronExpression: '0 6 * * *'}",
    )
    result = run(text, environment="dev-eks")
    assert result.errors == ()
    assert {w.path for w in result.warnings} == {"spec.resources[0].resourceOptions.dedicated"}
