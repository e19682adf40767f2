"""Runs through the API: start one on an environment, list and show them, ask to cancel one.

Reads come from the store (its projection of the run's events); a start goes through
`launch.start_run` and a cancel is a `RunCancelRequested` on the bus, as `trellis cancel` sends it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from trellis_core import subjects
from trellis_core.errors import TrellisError
from trellis_core.events import RunCancelRequested
from trellis_core.workflow import Action
from trellis_gateway.context import (
    GATEWAY,
    ApiProblem,
    endpoint,
    json_body_response,
    json_response,
    ok,
    query_int,
    read_body,
    remote,
    require,
)
from trellis_gateway.launch import audit, start_run
from trellis_store.api import RunDetail, RunGet, RunList, RunRowStatus, Runs

routes = web.RouteTableDef()

FINISHED: frozenset[RunRowStatus] = frozenset({"succeeded", "failed", "cancelled", "rejected"})
MAX_LIST = 500
MAX_IDEMPOTENCY_KEY = 200


class RunRequestBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    action: Action


class RunAccepted(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str


MAX_REASON_CHARS = 4096  # a cancel reason goes on the bus and into the run's record


class CancelBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)] = ""


class CancelAccepted(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str = "cancelling"


def valid_run_id(value: str) -> str:
    """A run id that can be a subject token; anything else cannot name a run (404, not 422)."""
    try:
        return subjects.token(value, "run id")
    except TrellisError:
        raise ApiProblem(404, "Not Found", f"no run {value!r}", path="run_id") from None


async def run_of(request: web.Request, run_id: str) -> RunDetail:
    """The caller's tenant's run, or 404 (another tenant's run is absent)."""
    gateway = request.app[GATEWAY]
    tenant = require(request, "viewer").tenant
    return ok(await gateway.store.ask(RunGet(tenant=tenant, run_id=valid_run_id(run_id)), RunDetail))


@endpoint(
    routes,
    "POST",
    "/v1/environments/{name}/runs",
    summary="Start a deploy or destroy of the environment (an Idempotency-Key header makes a retry start one run)",
    body=RunRequestBody,
    response=RunAccepted,
    status=202,
    role="operator",
    errors=(404, 409, 413, 422),
    headers=(("Idempotency-Key", "a retried POST with the same key and body answers the same run"),),
)
async def post_run(request: web.Request) -> web.StreamResponse:
    who = require(request, "operator")
    body = await read_body(request, RunRequestBody)
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiProblem(422, "Unprocessable Content", f"Idempotency-Key is over {MAX_IDEMPOTENCY_KEY} characters")
    created = await start_run(
        request.app[GATEWAY],
        who,
        who.tenant,
        request.match_info["name"],
        body.action,
        idempotency_key=key,
        remote=remote(request),
    )
    return json_response(
        RunAccepted(run_id=created.run_id), status=202, headers={"Location": f"/v1/runs/{created.run_id}"}
    )


@endpoint(
    routes,
    "GET",
    "/v1/runs",
    summary="The tenant's runs, newest first",
    response=Runs,
    query=(
        ("environment", "only this environment's runs"),
        ("limit", f"at most this many (1-{MAX_LIST}, default 50)"),
        ("before", "a run id: runs requested before it (the next page)"),
    ),
    errors=(422,),
)
async def list_runs(request: web.Request) -> web.StreamResponse:
    tenant = require(request, "viewer").tenant
    query = request.query
    limit = query_int(request, "limit", 50, 1, MAX_LIST)
    asked = RunList(
        tenant=tenant, environment=query.get("environment", ""), limit=limit, before=query.get("before", "")
    )
    return json_response(ok(await request.app[GATEWAY].store.ask(asked, Runs)))


@endpoint(
    routes,
    "GET",
    "/v1/runs/{run_id}",
    summary="A run: its status and every activity's status, attempts, times, outputs and reason",
    response=RunDetail,
    errors=(404,),
)
async def get_run(request: web.Request) -> web.StreamResponse:
    # The store's encoded RunDetail passed on as is: a 7,000-activity run is 2.5 MB of JSON that
    # decoding into Structs and encoding again would take ~40 ms to reproduce byte for byte.
    tenant = require(request, "viewer").tenant
    asked = RunGet(tenant=tenant, run_id=valid_run_id(request.match_info["run_id"]))
    body = ok(await request.app[GATEWAY].store.ask_raw(asked))
    return json_body_response(body)


@endpoint(
    routes,
    "POST",
    "/v1/runs/{run_id}/cancel",
    summary="Ask the scheduler to cancel a run (hooks that always run still run)",
    body=CancelBody,
    response=CancelAccepted,
    status=202,
    role="operator",
    errors=(404, 409),
)
async def cancel_run(request: web.Request) -> web.StreamResponse:
    who = require(request, "operator")
    run = await run_of(request, request.match_info["run_id"])
    body = await read_body(request, CancelBody) if await request.read() else CancelBody()
    if run.status in FINISHED:
        raise ApiProblem(409, "Conflict", f"run {run.run_id} has already finished ({run.status})")
    reason = body.reason or f"cancelled through the API by {who.user}"
    gateway = request.app[GATEWAY]
    await gateway.bus.publish_event(
        RunCancelRequested(tenant=who.tenant, run_id=run.run_id, reason=reason, requested_by=who.user)
    )
    await audit(gateway, who.tenant, who.user, "run.cancel", run.run_id, {"reason": reason}, remote(request))
    return json_response(CancelAccepted(run_id=run.run_id), status=202)
