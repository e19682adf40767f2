"""Drift checks through the API: start one on a deployed environment (`start_drift_check`, which
the schedules loop calls too). What it found shows on the environment (`drift`, docs/drift.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from trellis_core.workflow import RunPurpose
from trellis_gateway.context import GATEWAY, ApiProblem, Gateway, endpoint, json_response, ok, remote, require
from trellis_gateway.environments_routes import environment_name
from trellis_gateway.launch import start_run
from trellis_gateway.runs_routes import MAX_IDEMPOTENCY_KEY, RunAccepted
from trellis_store.api import DeployRecord, DeployRecordGet, Environment, EnvironmentGet, Principal, RunCreated

routes = web.RouteTableDef()

DRIFT = RunPurpose(drift=True)


async def start_drift_check(
    gateway: Gateway,
    tenant: str,
    environment: str,
    actor: Principal | str,
    *,
    trigger: Mapping[str, Any] | None = None,
    idempotency_key: str = "",
    remote: str = "",
) -> RunCreated:
    """Record and publish a drift check of `environment`: a plan-only run with its deployed variables.
    Raises ApiProblem: 404 unknown environment, 409 never deployed (or destroyed since), and those
    of `launch.start_run`. `trigger`: what started it (default `{"type": "api"}`; the schedules loop
    passes `{"type": "schedule", "schedule": <name>}`)."""
    ok(await gateway.store.ask(EnvironmentGet(tenant=tenant, name=environment), Environment))
    record = ok(await gateway.store.ask(DeployRecordGet(tenant=tenant, environment=environment), DeployRecord))
    if not record.deployed:
        raise ApiProblem(
            409,
            "Conflict",
            f"environment {environment!r} is not deployed (never, or destroyed since): a drift check compares "
            "the live infrastructure with a deploy",
            path="name",
        )
    return await start_run(
        gateway, actor, tenant, environment, "deploy", purpose=DRIFT, trigger=trigger or {"type": "api"},
        idempotency_key=idempotency_key, remote=remote,
    )


@endpoint(
    routes,
    "POST",
    "/v1/environments/{name}/drift",
    summary="Start a drift check of the deployed environment: plan-only, it changes nothing (see its drift)",
    response=RunAccepted,
    status=202,
    role="operator",
    errors=(404, 409, 413, 422),
    headers=(("Idempotency-Key", "a retried POST with the same key answers the same run"),),
)
async def post_drift(request: web.Request) -> web.StreamResponse:
    who = require(request, "operator")
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiProblem(422, "Unprocessable Content", f"Idempotency-Key is over {MAX_IDEMPOTENCY_KEY} characters")
    created = await start_drift_check(
        request.app[GATEWAY], who.tenant, environment_name(request), who, idempotency_key=key,
        remote=remote(request),
    )
    return json_response(
        RunAccepted(run_id=created.run_id), status=202, headers={"Location": f"/v1/runs/{created.run_id}"}
    )
