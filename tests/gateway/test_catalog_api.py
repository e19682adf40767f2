"""GET /v1/environment-templates/{name}/{version}: a published EnvironmentTemplate version as a launch
form needs it (variables with their rules, never a sensitive default; actions; schedules), a 404
naming what is missing, bad path parameters named, and another tenant's template absent."""

from __future__ import annotations

import pytest
from gateway_support import Api, Tenant

pytestmark = pytest.mark.timeout(90)

SECRET_DEFAULT = "default-secret-never-shown-7f3a"

# Two versions of `lab`: v1 with a variable of every kind, an action and a schedule; v2 bare.
LAB = f"""\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {{name: cell}}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{{name: make, type: script, options: {{script: {{script: "echo cell"}}}}}}]
  actions:
    - {{name: poke, type: workflows, description: poke the cell,
       workflows: {{tasks: [{{name: p, type: script, options: {{script: {{script: "echo poke"}}}}}}]}}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {{name: lab, description: A lab to try things in}}
spec:
  version: v1
  agents: [{{name: default}}]
  resources: [{{name: cell}}]
  variables:
    - {{name: team, options: {{required: true, description: Who owns it}}}}
    - name: size
      value: 2
      options: {{override: {{type: restricted, restrictedValues: [1, 2, 4]}}}}
    - {{name: owner, value: platform, options: {{override: {{type: notallowed}}}}}}
    - {{name: token, value: {SECRET_DEFAULT}, options: {{sensitive: true}}}}
    - {{name: tags, valueType: json, value: {{env: lab}}}}
  actions:
    - name: restart
      type: workflows
      description: restart every service
      workflows: {{tasks: [{{name: r, type: script, options: {{script: {{script: "echo restart"}}}}}}]}}
  schedules:
    - {{name: nightly, type: deploy, description: redeploy at night, cadence: {{cronExpression: '0 2 * * *'}}}}
    - {{name: ttl, type: destroy, cadence: {{timeToLive: 8h}}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {{name: lab}}
spec:
  version: v2
  description: The second lab
  agents: [{{name: default}}]
  resources: [{{name: cell}}]
"""


async def publish_lab(api: Api, tenant: Tenant) -> None:
    sources = [{"path": "lab.yaml", "text": LAB}]
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": sources})).ok(201)


async def test_a_version_answers_its_variables_actions_and_schedules(api: Api, tenant: Tenant) -> None:
    await publish_lab(api, tenant)
    answer = await api.call("GET", "/v1/environment-templates/lab/v1", token=tenant.viewer)
    view = answer.ok(200)
    assert (view["name"], view["version"], view["description"]) == ("lab", "v1", "A lab to try things in")
    variables = {v["name"]: v for v in view["variables"]}
    assert list(variables) == ["team", "size", "owner", "token", "tags"]  # as the template declares them
    assert variables["team"] == {
        "name": "team", "value_type": "text", "description": "Who owns it", "required": True, "sensitive": False,
        "override": "allowed", "restricted_values": [], "multi_select": False, "default": None, "has_default": False,
    }  # fmt: skip
    # Restricted values and defaults as text, the form the compiler compares an environment's value in.
    assert variables["size"]["override"] == "restricted"
    assert variables["size"]["restricted_values"] == ["1", "2", "4"]
    assert variables["size"]["default"] == "2"
    assert (variables["owner"]["override"], variables["owner"]["default"]) == ("notallowed", "platform")
    assert variables["tags"]["value_type"] == "json"
    assert variables["tags"]["default"] == '{"env": "lab"}'
    token = variables["token"]
    assert token["sensitive"] is True
    assert token["has_default"] is True
    assert token["default"] is None
    assert SECRET_DEFAULT.encode() not in answer.body
    assert view["actions"] == [
        {"name": "restart", "type": "workflows", "description": "restart every service", "resource": ""},
        {"name": "poke", "type": "workflows", "description": "poke the cell", "resource": "cell"},
    ]
    assert view["schedules"] == [
        {"name": "nightly", "type": "deploy", "description": "redeploy at night"},
        {"name": "ttl", "type": "destroy", "description": ""},
    ]
    second = (await api.call("GET", "/v1/environment-templates/lab/v2", token=tenant.viewer)).ok(200)
    assert (second["description"], second["variables"], second["schedules"]) == ("The second lab", [], [])
    assert [a["name"] for a in second["actions"]] == ["poke"]  # its resource's only


async def test_what_a_launch_form_sends_from_the_answer_is_accepted(api: Api, tenant: Tenant) -> None:
    """A restricted value sent as the answer lists it (text) is one the compiler accepts."""
    await publish_lab(api, tenant)
    view = (await api.call("GET", "/v1/environment-templates/lab/v1", token=tenant.viewer)).ok(200)
    size = next(v for v in view["variables"] if v["name"] == "size")
    body = {
        "template": {"name": "lab", "version": "v1"},
        "variables": {"team": "a", "size": size["restricted_values"][2]},
    }
    (await api.call("PUT", "/v1/environments/lab-one", token=tenant.operator, json=body)).ok(201)
    body["variables"]["size"] = "3"
    bad = (await api.call("PUT", "/v1/environments/lab-two", token=tenant.operator, json=body)).problem(422)
    assert bad["path"] == "variables.size"


async def test_a_missing_template_or_version_is_a_404_naming_it(api: Api, tenant: Tenant) -> None:
    await publish_lab(api, tenant)
    unknown = (await api.call("GET", "/v1/environment-templates/nope/v1", token=tenant.viewer)).problem(404)
    assert unknown["path"] == "name"
    assert "no EnvironmentTemplate 'nope'" in unknown["detail"]
    version = (await api.call("GET", "/v1/environment-templates/lab/v9", token=tenant.viewer)).problem(404)
    assert version["path"] == "version"
    assert version["detail"] == "EnvironmentTemplate 'lab' has no version 'v9' (published: v1, v2)"
    # A ResourceTemplate is not something to launch.
    resource = (await api.call("GET", "/v1/environment-templates/cell/v1", token=tenant.viewer)).problem(404)
    assert resource["path"] == "name"


async def test_bad_path_parameters_and_no_token_are_refused(api: Api, tenant: Tenant) -> None:
    bad_name = (await api.call("GET", "/v1/environment-templates/Not_A_Label/v1", token=tenant.viewer)).problem(422)
    assert bad_name["path"] == "name"
    long_version = "v" * 129
    too_long = await api.call("GET", f"/v1/environment-templates/lab/{long_version}", token=tenant.viewer)
    assert too_long.problem(422)["path"] == "version"
    (await api.call("GET", "/v1/environment-templates/lab/v1")).problem(401)


async def test_another_tenants_template_is_absent(api: Api, tenant: Tenant, other_tenant: Tenant) -> None:
    await publish_lab(api, tenant)
    absent = (await api.call("GET", "/v1/environment-templates/lab/v1", token=other_tenant.admin)).problem(404)
    assert "lab" in absent["detail"]
    assert "A lab to try things in" not in absent["detail"]
    assert "v2" not in absent["detail"]  # not even which versions it has


async def test_the_route_is_in_the_api_document(api: Api) -> None:
    paths = (await api.call("GET", "/openapi.json")).ok()["paths"]
    route = paths["/v1/environment-templates/{name}/{version}"]["get"]
    assert route["x-trellis-role"] == "viewer"
    assert {p["name"] for p in route["parameters"]} == {"name", "version"}
    schema = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/EnvironmentTemplateView"}
