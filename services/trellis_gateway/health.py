"""The gateway's own routes, without a bearer token: liveness, readiness (bus and store answer),
Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from trellis_gateway import metrics
from trellis_gateway.context import GATEWAY, OPENAPI, ApiProblem, endpoint, json_response
from trellis_store.api import Ping, Pong, StoreError

routes = web.RouteTableDef()
READY_TIMEOUT_SECONDS = 2.0


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    schema_version: int
    projected_events: int
    projected_logs: int


@endpoint(routes, "GET", "/healthz", summary="The process answers", response=Health, role=None)
async def healthz(request: web.Request) -> web.Response:
    return json_response(Health(status="ok"))


@endpoint(
    routes,
    "GET",
    "/readyz",
    summary="Ready to serve: connected to the bus and the state store answers",
    response=Readiness,
    role=None,
)
async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if not gateway.bus.nc.is_connected:
        raise ApiProblem(503, "Service Unavailable", "not connected to NATS (reconnecting)")
    pong = await gateway.store.ask(Ping(), Pong, timeout=READY_TIMEOUT_SECONDS)
    if isinstance(pong, StoreError):
        raise ApiProblem(503, "Service Unavailable", f"the state store does not answer: {pong.message}")
    return json_response(
        Readiness(
            status="ready",
            schema_version=pong.schema_version,
            projected_events=pong.projected_events,
            projected_logs=pong.projected_logs,
        )
    )


@endpoint(
    routes,
    "GET",
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    role=None,
    produces=("text/plain",),
)
async def metrics_text(request: web.Request) -> web.Response:
    text = request.app[GATEWAY].metrics.render()
    return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


@endpoint(
    routes,
    "GET",
    "/openapi.json",
    summary="This API's OpenAPI 3.1 document",
    response=dict[str, Any],
    role=None,
)
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
