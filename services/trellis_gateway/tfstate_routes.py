"""Managed OpenTofu/Terraform state (docs/state-backend.md): Terraform's HTTP backend protocol at
`/v1/tfstate/{tenant}/{environment}/{resource}` (GET, POST ?ID=, DELETE, LOCK, UNLOCK) for a run's
basic-auth state credential, and the operator's view of an environment's state and force-unlock
under `/v1/environments/{name}/state` for bearer tokens."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from trellis_core import state_credentials
from trellis_core.errors import ConfigError
from trellis_core.logs import get_logger
from trellis_gateway.context import (
    GATEWAY,
    ApiProblem,
    endpoint,
    has_nul,
    json_response,
    ok,
    read_body,
    remote,
    require,
)
from trellis_gateway.environments_routes import environment_name
from trellis_store.api import (
    StoreError,
    TfLockHolder,
    TfStateData,
    TfStateDelete,
    TfStateGet,
    TfStateLock,
    TfStatePut,
    TfStateShow,
    TfStateSummary,
    TfStateUnlock,
    TfStateWritten,
)
from trellis_store.context import ENVIRONMENT_NAME, TENANT_NAME

log = get_logger("gateway.tfstate")
routes = web.RouteTableDef()

# A state travels to the store in one NATS message (base64 in JSON, 4/3 of its size): this keeps
# it under the 1 MiB max_payload of a default nats-server.
MAX_STATE_BYTES = 700 * 1024
PROTOCOL_PATH = "/v1/tfstate/{tenant}/{environment}/{resource}"
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="trellis-state"'}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a resource's (DNS label) name, and more
_TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}
_info_decoder = msgspec.json.Decoder(dict[str, Any])
MAX_LOCK_INFO_BYTES = 16 * 1024  # tofu's lock info is a few hundred bytes


# ---- the HTTP backend protocol (a run's credential) ------------------------------------------


def _credential(request: web.Request) -> str:
    """The basic-auth password (TF_HTTP_PASSWORD), or 401 asking for it."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise ApiProblem(
            401, "Unauthorized", "basic auth with the run's state credential is required", headers=_BASIC_CHALLENGE
        )
    try:
        _, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem(
            401, "Unauthorized", "the basic auth header is not base64 of user:password", headers=_BASIC_CHALLENGE
        ) from None
    if not sep or not password:
        raise ApiProblem(
            401, "Unauthorized", "the basic auth password (the state credential) is empty", headers=_BASIC_CHALLENGE
        )
    return password


def _scope(request: web.Request) -> tuple[str, str, str, str]:
    """(tenant, environment, resource, run id) of a request whose credential is good for its URL;
    403 naming why not (another tenant's or environment's state, expired, altered)."""
    gateway = request.app[GATEWAY]
    if not gateway.settings.callback_key:
        raise ApiProblem(404, "Not Found", "managed state is not enabled (TRELLIS_CALLBACK_KEY is not set)")
    try:
        key = state_credentials.state_key(gateway.settings.callback_key)
    except ConfigError as exc:
        raise ApiProblem(503, "Service Unavailable", str(exc)) from None
    tenant, environment = request.match_info["tenant"], request.match_info["environment"]
    resource = request.match_info["resource"]
    named = (
        ("tenant", tenant, TENANT_NAME),
        ("environment", environment, ENVIRONMENT_NAME),
        ("resource", resource, _NAME),
    )
    for what, name, pattern in named:
        if not pattern.fullmatch(name):
            raise ApiProblem(404, "Not Found", f"{what} {name!r} is not a name Trellis gives", path=what)
    claims = state_credentials.verify(key, _credential(request), datetime.now(UTC))
    why = _refusal(claims, tenant, environment)
    if why or isinstance(claims, str):
        log.warning("tfstate_credential_refused", tenant=tenant, environment=environment, resource=resource, why=why)
        raise ApiProblem(403, "Forbidden", why)
    return tenant, environment, resource, claims.run_id


def _refusal(claims: state_credentials.StateClaims | str, tenant: str, environment: str) -> str:
    """Why a verified (or refused: the reason) credential may not touch this URL, or ""."""
    if isinstance(claims, str):
        return claims
    if not claims.run_id:  # the store skips its run check for an empty one (an operator's request)
        return "the state credential names no run"
    if claims.tenant != tenant:
        return f"the state credential is not for tenant {tenant!r}"
    if claims.environment != environment:
        return f"the state credential is not for environment {environment!r}"
    return ""


def _refused(answer: StoreError) -> ApiProblem:
    status = {"forbidden": 403, "invalid": 400, "not_found": 404, "unavailable": 503}.get(answer.code, 500)
    return ApiProblem(status, _TITLES.get(status, "Internal Server Error"), answer.message, path=answer.path)


def _holder_body(holder: TfLockHolder | None) -> bytes:
    """The lock in the way, as the client's lock info (what tofu prints), its `Info` saying when
    the run holding it has ended and how to release it."""
    if holder is None:
        return b"{}"
    info = dict(holder.info)
    if holder.ended:
        finished = holder.run_finished_at.isoformat() if holder.run_finished_at else "an unknown time"
        said = f"held by run {holder.run_id} which ended {holder.run_status} at {finished}; {holder.hint}"
        info["Info"] = f"{info['Info']}; {said}" if info.get("Info") else said
    return msgspec.json.encode(info)


def _locked(status: int, holder: TfLockHolder | None) -> web.Response:
    return web.Response(status=status, body=_holder_body(holder), content_type="application/json")


async def _ask_written(request: web.Request, req: Any) -> TfStateWritten:
    answer = await request.app[GATEWAY].store.ask(req, TfStateWritten)
    if isinstance(answer, StoreError):
        raise _refused(answer)
    return answer


@routes.get(PROTOCOL_PATH)
async def state_get(request: web.Request) -> web.StreamResponse:
    tenant, environment, resource, run_id = _scope(request)
    req = TfStateGet(tenant=tenant, environment=environment, resource=resource, run_id=run_id)
    answer = await request.app[GATEWAY].store.ask(req, TfStateData)
    if isinstance(answer, StoreError):
        raise _refused(answer)
    if not answer.found:
        return web.Response(status=404, text="no state saved", content_type="text/plain")
    md5 = base64.b64encode(hashlib.md5(answer.state).digest()).decode()  # the protocol's checksum
    return web.Response(body=answer.state, content_type="application/json", headers={"Content-MD5": md5})


@routes.post(PROTOCOL_PATH)
async def state_post(request: web.Request) -> web.StreamResponse:
    tenant, environment, resource, run_id = _scope(request)
    if request.content_length is not None and request.content_length > MAX_STATE_BYTES:
        raise ApiProblem(413, "Content Too Large", f"a managed state is at most {MAX_STATE_BYTES} bytes")
    body = await request.read()
    if len(body) > MAX_STATE_BYTES:
        raise ApiProblem(413, "Content Too Large", f"a managed state is at most {MAX_STATE_BYTES} bytes")
    given = request.headers.get("Content-MD5", "")
    if given and given != base64.b64encode(hashlib.md5(body).digest()).decode():
        raise ApiProblem(400, "Bad Request", "the state does not match its Content-MD5 header")
    lock_id = request.query.get("ID", "")
    req = TfStatePut(
        tenant=tenant, environment=environment, resource=resource, run_id=run_id, state=body, lock_id=lock_id
    )
    answer = await _ask_written(request, req)
    return web.Response(status=200) if answer.done else _locked(409, answer.holder)


@routes.delete(PROTOCOL_PATH)
async def state_delete(request: web.Request) -> web.StreamResponse:
    tenant, environment, resource, run_id = _scope(request)
    lock_id = request.query.get("ID", "")
    req = TfStateDelete(tenant=tenant, environment=environment, resource=resource, run_id=run_id, lock_id=lock_id)
    answer = await _ask_written(request, req)
    return web.Response(status=200) if answer.done else _locked(409, answer.holder)


def _resource(request: web.Request) -> str:
    resource = request.match_info["resource"]
    if not _NAME.fullmatch(resource):
        why = f"resource {resource[:80]!r} is not a resource name"
        raise ApiProblem(422, "Unprocessable Content", why, path="resource")
    return resource


async def _lock_info(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    if not body:
        return {}
    if len(body) > MAX_LOCK_INFO_BYTES:
        why = f"the lock info is {len(body):,} bytes; at most {MAX_LOCK_INFO_BYTES:,}"
        raise ApiProblem(413, "Content Too Large", why)
    if has_nul(body):
        raise ApiProblem(400, "Bad Request", "the lock info has a NUL character (\\u0000) in a string")
    try:
        return _info_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiProblem(400, "Bad Request", f"the lock info is not a JSON object: {exc}") from None


@routes.route("LOCK", PROTOCOL_PATH)
async def state_lock(request: web.Request) -> web.StreamResponse:
    tenant, environment, resource, run_id = _scope(request)
    info = await _lock_info(request)
    lock_id = info.get("ID")
    if not isinstance(lock_id, str) or not lock_id:
        raise ApiProblem(400, "Bad Request", "the lock info needs an ID (a non-empty string)", path="ID")
    req = TfStateLock(
        tenant=tenant, environment=environment, resource=resource, run_id=run_id, lock_id=lock_id, info=info
    )
    answer = await _ask_written(request, req)
    if answer.done:
        return web.Response(status=200, body=msgspec.json.encode(info), content_type="application/json")
    if answer.holder is not None and answer.holder.ended:
        log.warning(
            "tfstate_lock_held_by_ended_run",
            tenant=tenant,
            environment=environment,
            resource=resource,
            holder_run=answer.holder.run_id,
            holder_status=answer.holder.run_status,
            lock_id=answer.holder.lock_id,
        )
    return _locked(423, answer.holder)


@routes.route("UNLOCK", PROTOCOL_PATH)
async def state_unlock(request: web.Request) -> web.StreamResponse:
    tenant, environment, resource, run_id = _scope(request)
    lock_id = (await _lock_info(request)).get("ID")
    if not isinstance(lock_id, str) or not lock_id:
        hint = f"an operator can: trellis env state {environment} {resource} --unlock LOCK_ID"
        raise ApiProblem(409, "Conflict", f"UNLOCK needs the lock info with its ID; {hint}", path="ID")
    req = TfStateUnlock(tenant=tenant, environment=environment, resource=resource, run_id=run_id, lock_id=lock_id)
    answer = await _ask_written(request, req)
    return web.Response(status=200) if answer.done else _locked(409, answer.holder)


# ---- an operator's view (bearer tokens) ------------------------------------------------------


class UnlockBody(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /v1/environments/{name}/state/{resource}/unlock`: the id of the lock to release."""

    id: str


@endpoint(
    routes,
    "GET",
    "/v1/environments/{name}/state",
    summary="Every resource's managed state of an environment: history (newest first) and lock",
    response=TfStateSummary,
    role="operator",
)
async def environment_state(request: web.Request) -> web.Response:
    who = require(request, "operator")
    req = TfStateShow(tenant=who.tenant, environment=environment_name(request))
    return json_response(ok(await request.app[GATEWAY].store.ask(req, TfStateSummary)))


@endpoint(
    routes,
    "GET",
    "/v1/environments/{name}/state/{resource}",
    summary="One resource's managed state: history (newest first) and lock, with the run holding it",
    response=TfStateSummary,
    role="operator",
)
async def resource_state(request: web.Request) -> web.Response:
    who = require(request, "operator")
    req = TfStateShow(tenant=who.tenant, environment=environment_name(request), resource=_resource(request))
    return json_response(ok(await request.app[GATEWAY].store.ask(req, TfStateSummary)))


@endpoint(
    routes,
    "GET",
    "/v1/environments/{name}/state/{resource}/content",
    summary="The newest saved state document of a resource (it may hold secrets: admins only)",
    role="admin",
)
async def resource_state_content(request: web.Request) -> web.Response:
    who = require(request, "admin")
    environment, resource = environment_name(request), _resource(request)
    req = TfStateGet(tenant=who.tenant, environment=environment, resource=resource)
    answer = ok(await request.app[GATEWAY].store.ask(req, TfStateData))
    if not answer.found:
        raise ApiProblem(404, "Not Found", f"environment {environment!r} has no saved state for resource {resource!r}")
    return web.Response(body=answer.state, content_type="application/json")


@endpoint(
    routes,
    "POST",
    "/v1/environments/{name}/state/{resource}/unlock",
    summary="Release a resource's state lock by its id (a run that crashed holding it); audited",
    body=UnlockBody,
    response=TfStateWritten,
    role="admin",
    errors=(409,),
)
async def resource_state_unlock(request: web.Request) -> web.Response:
    who = require(request, "admin")
    body = await read_body(request, UnlockBody)
    environment, resource = environment_name(request), _resource(request)
    req = TfStateUnlock(
        tenant=who.tenant,
        environment=environment,
        resource=resource,
        lock_id=body.id,
        force=True,
        actor=who.user,
        remote=remote(request),
    )
    answer = ok(await request.app[GATEWAY].store.ask(req, TfStateWritten))
    if not answer.done:
        held = answer.holder.lock_id if answer.holder else ""
        raise ApiProblem(
            409, "Conflict", f"the lock of {environment}/{resource} is {held!r}, not {body.id!r}", path="id"
        )
    return json_response(answer)
