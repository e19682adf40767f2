"""Tenants (platform admin token), tokens (a tenant's admin) and the audit trail."""

from __future__ import annotations

import pytest
from gateway_support import Api, GatewayServer, Tenant

pytestmark = pytest.mark.timeout(90)


async def test_platform_admin_creates_a_tenant_whose_token_works(
    api: Api, gateway_server: GatewayServer, unique: str
) -> None:
    answer = await api.call("POST", "/v1/tenants", token=gateway_server.admin_token, json={"name": unique})
    created = answer.ok(201)
    assert created["name"] == unique
    assert created["role"] == "admin"
    assert len(created["token"]) >= 32
    listed = (await api.call("GET", "/v1/templates", token=created["token"])).ok()
    assert listed == {"documents": []}


async def test_an_existing_tenant_is_a_409(api: Api, gateway_server: GatewayServer, tenant: Tenant) -> None:
    answer = await api.call("POST", "/v1/tenants", token=gateway_server.admin_token, json={"name": tenant.name})
    problem = answer.problem(409)
    assert problem["path"] == "name"


async def test_tenants_need_the_platform_admin_token(api: Api, gateway_server: GatewayServer, unique: str) -> None:
    for header in (None, "Bearer not-the-admin-token", "Basic YWRtaW46YWRtaW4="):
        headers = {"Authorization": header} if header else {}
        answer = await api.call("POST", "/v1/tenants", json={"name": unique}, headers=headers)
        answer.problem(401)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert (
        await api.call("POST", "/v1/tenants", token=gateway_server.admin_token, json={"name": unique})
    ).status == 201


async def test_a_tenant_admin_token_is_not_the_platform_admin_token(api: Api, tenant: Tenant, unique: str) -> None:
    answer = await api.call("POST", "/v1/tenants", token=tenant.admin, json={"name": f"{unique}-x"})
    answer.problem(401)


async def test_a_bad_tenant_body_is_a_422_naming_the_field(api: Api, gateway_server: GatewayServer) -> None:
    for body, path in [
        ({"name": "has a space"}, "name"),
        ({"name": "a.b"}, "name"),  # a dot would split the tenant's NATS subjects
        ({"name": "store"}, "name"),  # reserved: the store's own subjects
        ({}, "name"),
        ({"name": "ok-name", "colour": "red"}, "colour"),
        ({"name": "ok-name", "admin_user": ""}, "admin_user"),
    ]:
        answer = await api.call("POST", "/v1/tenants", token=gateway_server.admin_token, json=body)
        assert answer.problem(422)["path"] == path, body


async def test_a_tenant_admin_issues_tokens_of_each_role(api: Api, tenant: Tenant) -> None:
    issued = (
        await api.call("POST", "/v1/tokens", token=tenant.admin, json={"role": "viewer", "user": "ann@x.example"})
    ).ok(201)
    assert issued["tenant"] == tenant.name
    assert issued["role"] == "viewer"
    assert issued["user"] == "ann@x.example"
    assert (await api.call("GET", "/v1/environments", token=issued["token"])).status == 200
    denied = await api.call("POST", "/v1/templates", token=issued["token"], json={"sources": []})
    denied.problem(403)


async def test_only_a_tenant_admin_issues_tokens(api: Api, tenant: Tenant) -> None:
    for role in ("operator", "viewer"):
        answer = await api.call("POST", "/v1/tokens", token=tenant.token(role), json={"role": "admin", "user": "eve"})
        assert "admin" in answer.problem(403)["detail"]


async def test_a_token_of_an_unknown_role_is_a_422(api: Api, tenant: Tenant) -> None:
    answer = await api.call("POST", "/v1/tokens", token=tenant.admin, json={"role": "root", "user": "eve"})
    assert answer.problem(422)["path"] == "role"


async def test_the_audit_trail_shows_who_did_what_in_the_tenant_only(
    api: Api, tenant: Tenant, other_tenant: Tenant
) -> None:
    entries = (await api.call("GET", "/v1/audit", token=tenant.admin)).ok()["entries"]
    actions = [(e["action"], e["actor"]) for e in entries]
    assert ("tenant.create", "platform-admin") in actions
    assert actions.count(("token.create", "admin")) == 2  # the operator's and the viewer's
    assert all(other_tenant.name not in str(e) for e in entries)
    limited = (await api.call("GET", "/v1/audit", token=tenant.admin, params={"limit": "1"})).ok()["entries"]
    assert len(limited) == 1


async def test_the_audit_trail_is_for_admins_and_its_limit_is_checked(api: Api, tenant: Tenant) -> None:
    (await api.call("GET", "/v1/audit", token=tenant.operator)).problem(403)
    for bad in ("0", "abc", "100000"):
        answer = await api.call("GET", "/v1/audit", token=tenant.admin, params={"limit": bad})
        assert answer.problem(422)["path"] == "limit"
