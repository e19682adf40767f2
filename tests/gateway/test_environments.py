"""Environments: created from a published template with variables checked by the compiler,
updated only under If-Match, read with sensitive values masked, and another tenant's absent."""

from __future__ import annotations

from typing import Any

import pytest
from gateway_support import Api, Tenant

from trellis_core.events import SourceFile
from trellis_gateway.environments_routes import check_environment, opaque, parse_if_match
from trellis_store.api import TemplateRef

pytestmark = pytest.mark.timeout(90)

PATH = "/v1/environments/dev"
SHOP = {"name": "shop", "version": "v1"}


def body(**variables: str) -> dict[str, Any]:
    return {"template": SHOP, "variables": variables, "agents": ["default"]}


async def test_an_environment_is_created_with_an_etag_and_read_back_masked(api: Api, published: Tenant) -> None:
    answer = await api.call("PUT", PATH, token=published.operator, json=body(team="a-team", password="s3cret"))
    created = answer.ok(201)
    assert created["name"] == "dev"
    assert created["status"] == "new"
    assert created["template"] == SHOP
    assert created["variables"] == {"team": "a-team", "password": "********"}
    assert created["sensitive"] == ["password"]
    assert answer.headers["ETag"].startswith('"')
    assert answer.headers["Location"] == PATH
    assert b"s3cret" not in answer.body
    read = await api.call("GET", PATH, token=published.viewer)
    shown = read.ok()
    assert read.headers["ETag"] == answer.headers["ETag"]
    assert shown["variables"]["password"] == "********"
    assert shown["last_run_id"] == ""
    assert shown["outputs"] == {}
    assert b"s3cret" not in read.body
    listed = (await api.call("GET", "/v1/environments", token=published.viewer)).ok()["environments"]
    assert [e["name"] for e in listed] == ["dev"]


async def test_an_update_needs_the_current_etag(api: Api, published: Tenant) -> None:
    created = await api.call("PUT", PATH, token=published.operator, json=body(team="a"))
    etag = created.headers["ETag"]
    missing = await api.call("PUT", PATH, token=published.operator, json=body(team="b"))
    assert missing.problem(412)["path"] == "If-Match"
    stale = await api.call("PUT", PATH, token=published.operator, json=body(team="b"), headers={"If-Match": '"999"'})
    stale.problem(412)
    updated = await api.call("PUT", PATH, token=published.operator, json=body(team="b"), headers={"If-Match": etag})
    assert updated.ok(200)["variables"]["team"] == "b"
    assert updated.headers["ETag"] != etag
    replay = await api.call("PUT", PATH, token=published.operator, json=body(team="c"), headers={"If-Match": etag})
    replay.problem(412)  # the old ETag no longer matches
    anything = await api.call("PUT", PATH, token=published.operator, json=body(team="d"), headers={"If-Match": "*"})
    assert anything.ok(200)["variables"]["team"] == "d"


async def test_if_match_on_an_absent_environment_is_a_412(api: Api, published: Tenant) -> None:
    answer = await api.call("PUT", PATH, token=published.operator, json=body(team="a"), headers={"If-Match": '"1"'})
    answer.problem(412)
    (await api.call("GET", PATH, token=published.viewer)).problem(404)


async def test_a_template_that_is_not_published_is_a_422_naming_template(api: Api, published: Tenant) -> None:
    for template in ({"name": "nope", "version": "v1"}, {"name": "shop", "version": "v9"}):
        answer = await api.call("PUT", PATH, token=published.operator, json={"template": template})
        problem = answer.problem(422)
        assert problem["path"] == "template"
        assert template["name"] in problem["detail"]


async def test_variables_are_checked_by_the_templates_rules(api: Api, published: Tenant) -> None:
    cases = [
        ({}, "variables.team", "required variable 'team'"),
        ({"team": "a", "nope": "x"}, "variables.nope", "not declared"),
        ({"team": "a", "region": "mars"}, "variables.region", "restrictedValues"),
        ({"team": "a", "owner": "me"}, "variables.owner", "may not be overridden"),
    ]
    for variables, path, message in cases:
        answer = await api.call("PUT", PATH, token=published.operator, json=body(**variables))
        problem = answer.problem(422)
        assert problem["path"] == path, variables
        assert message in problem["problems"][0]["message"]
    restricted = await api.call("PUT", PATH, token=published.operator, json=body(team="a", region="mars"))
    assert restricted.problem(422)["problems"][0]["hint"] == "allowed: eu-west-1, us-east-1"
    several = await api.call("PUT", PATH, token=published.operator, json=body(region="mars", owner="me"))
    assert {p["path"] for p in several.problem(422)["problems"]} == {
        "variables.team",
        "variables.region",
        "variables.owner",
    }
    allowed = await api.call("PUT", PATH, token=published.operator, json=body(team="a", region="us-east-1"))
    assert allowed.ok(201)["variables"]["region"] == "us-east-1"


async def test_bad_environment_bodies_and_names_are_422s_naming_the_field(api: Api, published: Tenant) -> None:
    for payload, path in [
        ({}, "template"),
        ({"template": {"name": "shop"}}, "template.version"),
        ({"template": {"name": "Shop!", "version": "v1"}}, "template.name"),
        ({"template": SHOP, "variables": {"team": 3}}, "variables"),
        ({"template": SHOP, "variables": {"9 bad": "x"}}, "variables"),
        ({"template": SHOP, "agents": ["Not A Name"]}, "agents[0]"),
        ({"template": SHOP, "colour": "red"}, "colour"),
    ]:
        answer = await api.call("PUT", PATH, token=published.operator, json=payload)
        assert answer.problem(422)["path"] == path, payload
    bad_name = await api.call("PUT", "/v1/environments/Not_A_Name", token=published.operator, json=body(team="a"))
    assert bad_name.problem(422)["path"] == "name"


async def test_another_tenants_environment_is_a_404_never_its_data(
    api: Api, published: Tenant, other_tenant: Tenant
) -> None:
    (await api.call("PUT", PATH, token=published.operator, json=body(team="a-team", password="s3cret"))).ok(201)
    for method, path in [("GET", PATH), ("POST", PATH + "/webhook")]:
        answer = await api.call(method, path, token=other_tenant.admin)
        answer.problem(404)
        assert b"a-team" not in answer.body
    assert (await api.call("GET", "/v1/environments", token=other_tenant.admin)).ok() == {"environments": []}
    # their own PUT of the same name needs their own published template
    theirs = await api.call("PUT", PATH, token=other_tenant.admin, json=body(team="a"))
    assert theirs.problem(422)["path"] == "template"


async def test_a_viewer_cannot_change_an_environment(api: Api, published: Tenant) -> None:
    (await api.call("PUT", PATH, token=published.viewer, json=body(team="a"))).problem(403)
    (await api.call("GET", PATH, token=published.viewer)).problem(404)


async def test_changes_are_audited(api: Api, published: Tenant) -> None:
    created = await api.call("PUT", PATH, token=published.operator, json=body(team="a", password="s3cret"))
    etag = created.headers["ETag"]
    await api.call("PUT", PATH, token=published.operator, json=body(team="b"), headers={"If-Match": etag})
    entries = (await api.call("GET", "/v1/audit", token=published.admin)).ok()["entries"]
    puts = [e for e in entries if e["action"] == "environment.put"]
    assert len(puts) == 2
    assert all(e["target"] == "dev" for e in puts)
    assert all(e["remote"] == "127.0.0.1" for e in puts)
    assert "s3cret" not in str(entries)


async def test_the_webhook_secret_is_rotated_by_an_admin_and_shown_once(api: Api, published: Tenant) -> None:
    (await api.call("POST", PATH + "/webhook", token=published.admin)).problem(404)  # no environment yet
    (await api.call("PUT", PATH, token=published.operator, json=body(team="a"))).ok(201)
    (await api.call("POST", PATH + "/webhook", token=published.operator)).problem(403)
    first = (await api.call("POST", PATH + "/webhook", token=published.admin)).ok()
    second = (await api.call("POST", PATH + "/webhook", token=published.admin)).ok()
    assert first["environment"] == "dev"
    assert len(first["secret"]) >= 32
    assert first["secret"] != second["secret"]
    assert second["url"].endswith(f"/v1/hooks/dev/{second['secret']}")
    shown = (await api.call("GET", PATH, token=published.admin)).body
    assert second["secret"].encode() not in shown


def test_the_check_compiles_the_bundle_with_the_variables() -> None:
    from gateway_support import TEMPLATES

    sources = [SourceFile(path="shop.yaml", text=TEMPLATES)]
    ref = TemplateRef(name="shop", version="v1")
    ok = check_environment(sources, "dev", ref, {"team": "a", "password": "x"}, ["default"])
    assert ok.errors == ()
    assert ok.sensitive == ("password",)
    wrong_version = check_environment(sources, "dev", TemplateRef(name="shop", version="v2"), {"team": "a"})
    assert [p.path for p in wrong_version.errors] == ["template"]
    missing = check_environment(sources, "dev", ref, {})
    assert [(p.path, p.file, p.line) for p in missing.errors] == [("variables.team", "shop.yaml", 22)]


def test_an_environment_published_in_the_bundle_is_the_one_checked_as_a_run_would_compile_it() -> None:
    from gateway_support import TEMPLATES

    published = """\
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: shop, version: v1}
  variables:
    - {name: team, value: from-the-bundle}
"""
    sources = [SourceFile(path="shop.yaml", text=TEMPLATES + published)]
    ref = TemplateRef(name="shop", version="v1")
    assert check_environment(sources, "dev", ref, {}).errors == ()  # team comes from the document
    assert [p.path for p in check_environment(sources, "prod", ref, {}).errors] == ["variables.team"]


def test_if_match_values_are_compared_as_opaque_tags() -> None:
    assert parse_if_match('"3", W/"4" , *') == ["3", "4", "*"]
    assert opaque('W/"3"') == opaque('"3"') == opaque("3") == "3"


async def test_environments_are_listed_by_name_in_pages(api: Api, published: Tenant) -> None:
    for name in ("prod", "dev"):
        (await api.call("PUT", f"/v1/environments/{name}", token=published.operator, json=body(team="a"))).ok(201)

    async def names(**params: str) -> list[str]:
        answer = await api.call("GET", "/v1/environments", token=published.viewer, params=params)
        return [e["name"] for e in answer.ok()["environments"]]

    assert await names() == ["dev", "prod"]
    assert await names(limit="1") == ["dev"]
    assert await names(limit="1", after="dev") == ["prod"]
    for params, path in [({"limit": "0"}, "limit"), ({"after": "Not Valid"}, "after")]:
        answer = await api.call("GET", "/v1/environments", token=published.viewer, params=params)
        assert answer.problem(422)["path"] == path
