"""An environment's schedules over HTTP: when each fires next (and when a time to live expires),
and `extend`, which postpones one within the template's optOutOptions (docs/schedules.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
from aiohttp import web

from trellis_gateway.context import (
    GATEWAY,
    ApiProblem,
    endpoint,
    json_response,
    ok,
    read_body,
    remote,
    require,
)
from trellis_gateway.environments_routes import NAME_PATH, environment_name
from trellis_store.api import ScheduleExtend, ScheduleList, ScheduleState, ScheduleStates
from trellis_templates.documents import DnsName
from trellis_templates.schedules import DURATION_HINT, parse_duration

routes = web.RouteTableDef()


class ExtendBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long to postpone, and which schedule (none: the environment's time to live)."""

    duration: Annotated[str, msgspec.Meta(min_length=1, max_length=32, description="e.g. 2h, 30m, 1d")]
    schedule: DnsName | None = None


@endpoint(
    routes,
    "GET",
    NAME_PATH + "/schedules",
    summary="An environment's schedules: the next firing of each, a time to live's expiry, opt-outs used",
    response=ScheduleStates,
)
async def list_schedules(request: web.Request) -> web.Response:
    who = require(request, "viewer")
    name = environment_name(request)
    states = await request.app[GATEWAY].store.ask(ScheduleList(tenant=who.tenant, environment=name), ScheduleStates)
    return json_response(ok(states))


@endpoint(
    routes,
    "POST",
    NAME_PATH + "/extend",
    summary="Postpone the environment's time to live (or a named schedule) within its optOutOptions (operator)",
    body=ExtendBody,
    response=ScheduleState,
    role="operator",
)
async def extend(request: web.Request) -> web.Response:
    """422 naming the limit (allowOptOut, maxAllowedDuration, maxAllowedTimes) when it is beyond
    it; 403 when the schedule's optOutOptions.approval asks for an admin; 404 no such environment
    or schedule."""
    who = require(request, "operator")
    name = environment_name(request)
    body = await read_body(request, ExtendBody)
    duration = parse_duration(body.duration)
    if duration is None:
        raise ApiProblem(
            422, "Unprocessable Content", f"{body.duration!r} is not a duration ({DURATION_HINT})", path="duration"
        )
    postpone = ScheduleExtend(
        tenant=who.tenant,
        environment=name,
        name=body.schedule or "",
        seconds=int(duration.total_seconds()),
        admin=who.role == "admin",
        actor=who.user,
        remote=remote(request),
        now=datetime.now(UTC),
    )
    return json_response(ok(await request.app[GATEWAY].store.ask(postpone, ScheduleState)))
