"""Tenants, tokens and the audit trail: the platform admin creates a tenant (and gets its first
admin token), a tenant's admin issues tokens to its users and reads what was done."""

from __future__ import annotations

import hmac
from typing import Annotated

import msgspec
from aiohttp import web

from trellis_core.bus import ensure_work_stream
from trellis_core.subjects import RESERVED_TENANTS
from trellis_gateway.auth import bearer_token
from trellis_gateway.context import (
    GATEWAY,
    ApiProblem,
    endpoint,
    json_response,
    ok,
    query_int,
    read_body,
    require,
    sha256_hex,
)
from trellis_store.api import (
    AgentCredentials,
    AgentCredentialsCreate,
    AuditEntries,
    AuditList,
    IssuedToken,
    Role,
    TenantCreate,
    TokenCreate,
)

routes = web.RouteTableDef()

# A tenant is one NATS subject token (trellis.<tenant>.runs.requested), so its name is one too.
TenantName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_-]{1,128}$", description="1-128 letters, digits, '-' or '_' (a NATS subject token)"
    ),
]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="an e-mail or a name")]
MAX_AUDIT = 1000


class TenantBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TenantName
    admin_user: UserName = "admin"


class TenantCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant, its first admin token (shown once, stored only as its SHA-256) and its first
    agent credentials (the nkey seed shown once, only its public key stored)."""

    name: str
    token: str
    user: str
    role: Role
    agent: AgentCredentials


class AgentCredentialsBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, description="which cluster or pool")] = "agent"


class TokenBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    role: Role
    user: UserName


_ADMIN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="trellis-platform"'}


def _check_platform_admin(request: web.Request) -> None:
    """The bearer token must be TRELLIS_ADMIN_TOKEN (compared by SHA-256, in constant time)."""
    expected = request.app[GATEWAY].admin_token_sha256
    token = bearer_token(request.headers.get("Authorization"))
    if not expected:
        raise ApiProblem(
            401, "Unauthorized", "tenants cannot be created: TRELLIS_ADMIN_TOKEN is not set", headers=_ADMIN_CHALLENGE
        )
    if token is None:
        raise ApiProblem(
            401, "Unauthorized", "the platform admin token is required as a bearer token", headers=_ADMIN_CHALLENGE
        )
    if not hmac.compare_digest(sha256_hex(token), expected):
        raise ApiProblem(401, "Unauthorized", "this is not the platform admin token", headers=_ADMIN_CHALLENGE)


@endpoint(
    routes,
    "POST",
    "/v1/tenants",
    summary="Create a tenant and its first admin token (platform admin token as bearer)",
    body=TenantBody,
    response=TenantCreated,
    status=201,
    role=None,
    errors=(401, 409),
)
async def create_tenant(request: web.Request) -> web.Response:
    _check_platform_admin(request)
    body = await read_body(request, TenantBody)
    if body.name in RESERVED_TENANTS:
        raise ApiProblem(422, "Unprocessable Content", f"tenant name {body.name!r} is reserved", path="name")
    gateway = request.app[GATEWAY]
    issued = ok(await gateway.store.ask(TenantCreate(name=body.name, admin_user=body.admin_user), IssuedToken))
    # Its agents bind consumers on its own work stream and may not create one: the control plane does.
    await ensure_work_stream(gateway.bus, body.name)
    agent = ok(
        await gateway.store.ask(
            AgentCredentialsCreate(tenant=body.name, name="agent", actor="platform-admin"), AgentCredentials
        )
    )
    created = TenantCreated(name=body.name, token=issued.token, user=issued.user, role=issued.role, agent=agent)
    return json_response(created, status=201, headers={"Location": f"/v1/tenants/{body.name}"})


@endpoint(
    routes,
    "POST",
    "/v1/tenants/{tenant}/agent-credentials",
    summary="New agent credentials for the tenant's agents (its admin); the nkey seed is shown once",
    body=AgentCredentialsBody,
    response=AgentCredentials,
    status=201,
    role="admin",
)
async def create_agent_credentials(request: web.Request) -> web.Response:
    who = require(request, "admin")
    tenant = request.match_info["tenant"]
    if tenant != who.tenant:
        raise ApiProblem(403, "Forbidden", f"this token is tenant {who.tenant!r}'s, not {tenant!r}'s")
    body = await read_body(request, AgentCredentialsBody)
    gateway = request.app[GATEWAY]
    await ensure_work_stream(gateway.bus, tenant)
    made = ok(
        await gateway.store.ask(AgentCredentialsCreate(tenant=tenant, name=body.name, actor=who.user), AgentCredentials)
    )
    return json_response(made, status=201)


@endpoint(
    routes,
    "POST",
    "/v1/tokens",
    summary="Issue a token of the caller's tenant to a user (admin); the token is shown once",
    body=TokenBody,
    response=IssuedToken,
    status=201,
    role="admin",
)
async def create_token(request: web.Request) -> web.Response:
    who = require(request, "admin")
    body = await read_body(request, TokenBody)
    gateway = request.app[GATEWAY]
    issued = ok(
        await gateway.store.ask(
            TokenCreate(tenant=who.tenant, role=body.role, user=body.user, actor=who.user), IssuedToken
        )
    )
    return json_response(issued, status=201)


@endpoint(
    routes,
    "GET",
    "/v1/audit",
    summary="What was done through the API in the caller's tenant, newest first (admin)",
    response=AuditEntries,
    role="admin",
    query=(("limit", "at most this many entries (1-1000, default 100)"),),
)
async def list_audit(request: web.Request) -> web.Response:
    who = require(request, "admin")
    limit = query_int(request, "limit", 100, 1, MAX_AUDIT)
    entries = ok(await request.app[GATEWAY].store.ask(AuditList(tenant=who.tenant, limit=limit), AuditEntries))
    return json_response(entries)
